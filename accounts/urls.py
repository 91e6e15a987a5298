from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("experts/", views.expert_directory, name="expert_directory"),
    path("experts/<slug:slug>/", views.expert_detail, name="expert_detail"),
    path("me/profile/", views.profile_edit, name="profile"),
    path("me/expert/", views.expert_apply, name="expert_apply"),
    path(
        "reminders/off/<str:token>/",
        views.reminders_unsubscribe,
        name="reminders_unsubscribe",
    ),
]
