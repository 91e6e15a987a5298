from django.urls import path

from rooms import views

app_name = "rooms"

urlpatterns = [
    path("r/<int:room_id>/", views.join, name="join"),
    path("r/<int:room_id>/state/", views.room_state, name="room_state"),
    path("r/<int:room_id>/summary/", views.room_summary, name="room_summary"),
    path("r/<int:room_id>/probe/", views.probe, name="probe"),
    path("r/<int:room_id>/rate/", views.room_rate, name="room_rate"),
    path("me/sessions/", views.dashboard, name="dashboard"),
    path("book/<int:offering_id>/", views.offering_book, name="offering_book"),
    path("sessions/<int:room_id>/seat/", views.group_seat_take, name="group_seat_take"),
    path("me/bookings/<int:seat_id>/confirm/", views.seat_confirm, name="seat_confirm"),
    path("me/bookings/<int:seat_id>/cancel/", views.seat_cancel, name="seat_cancel"),
    path("me/bookings/<int:seat_id>/move/", views.seat_reschedule, name="seat_reschedule"),
    path("me/sessions/<int:room_id>/cancel/", views.room_cancel, name="room_cancel"),
    path("me/expert/offerings/", views.expert_offerings, name="expert_offerings"),
    path("me/expert/offerings/new/", views.offering_edit, name="offering_new"),
    path("me/expert/offerings/<int:offering_id>/", views.offering_edit, name="offering_edit"),
    path(
        "me/expert/offerings/<int:offering_id>/publish/",
        views.group_session_publish,
        name="group_session_publish",
    ),
    path("me/expert/availability/", views.expert_availability, name="expert_availability"),
    path(
        "me/expert/availability/dates/<int:override_id>/delete/",
        views.override_delete,
        name="override_delete",
    ),
]
