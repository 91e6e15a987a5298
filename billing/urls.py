from django.urls import path

from billing import views

app_name = "billing"

urlpatterns = [
    path("pay/<int:payment_id>/", views.pay, name="pay"),
    path("pay/<int:payment_id>/return/", views.pay_return, name="pay_return"),
    path("billing/webhooks/stripe/", views.stripe_webhook, name="stripe_webhook"),
    path("me/payouts/", views.payouts, name="payouts"),
    path("me/payouts/earnings.csv", views.payouts_csv, name="payouts_csv"),
    path("me/receipts/<int:payment_id>/", views.receipt, name="receipt"),
]
