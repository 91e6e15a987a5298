from django.urls import path

from moderation import views

app_name = "moderation"

urlpatterns = [
    path("r/<int:room_id>/report/", views.report, name="report"),
    path("r/<int:room_id>/block/", views.block, name="block"),
    path("r/<int:room_id>/dispute/", views.dispute, name="dispute"),
    path("me/blocks/", views.blocks, name="blocks"),
    path("me/blocks/<int:user_id>/unblock/", views.unblock, name="unblock"),
]
