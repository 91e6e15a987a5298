from django.urls import path

from moderation import views

app_name = "moderation"

urlpatterns = [
    path("r/<int:room_id>/report/", views.report, name="report"),
]
