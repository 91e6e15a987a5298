"""Every state change of offerings, availability, rooms and seats — one module per entity,
this package the one door.

Room and seat states change only here, each through a guarded transition (a row lock or a
conditional UPDATE) that also writes a RoomEvent. Emails are written to the outbox inside the
same transaction and sent after commit.
"""

from rooms.services.booking import (
    NO_OVERLAP_CONSTRAINT,
    booking_reserve,
    group_room_publish,
    group_seat_reserve,
    reservations_expire,
    seat_confirm,
    seat_payment_authorized,
    seat_payment_card_saved,
)
from rooms.services.changes import (
    bookings_cancel_for_block,
    bookings_cancel_for_suspension,
    reminders_queue,
    room_cancel_by_expert,
    room_cancel_by_staff,
    seat_cancel,
    seat_reschedule,
)
from rooms.services.feedback import rating_give
from rooms.services.offerings import (
    availability_override_add,
    availability_override_delete,
    availability_replace_weekly,
    offering_save,
)
from rooms.services.presence import (
    Heartbeats,
    Joined,
    JoinRefused,
    call_stats_record,
    media_state_report,
    pair_separate,
    participant_remove,
    presence_close,
    presence_grace_check,
    presence_open,
    presences_heartbeat,
    presences_sweep_stale,
    room_admission_check,
)
from rooms.services.room_state import (
    presence_stale_before,
    room_catch_up,
    room_close,
    room_close_if_due,
    room_end_by_expert,
    room_mark_live,
    room_open,
    rooms_advance,
    rooms_close_due,
)

__all__ = [
    "rating_give",
    "JoinRefused",
    "Heartbeats",
    "Joined",
    "call_stats_record",
    "media_state_report",
    "pair_separate",
    "participant_remove",
    "presence_close",
    "presence_grace_check",
    "presence_stale_before",
    "presences_heartbeat",
    "presence_open",
    "presences_sweep_stale",
    "room_admission_check",
    "NO_OVERLAP_CONSTRAINT",
    "availability_override_add",
    "availability_override_delete",
    "availability_replace_weekly",
    "booking_reserve",
    "bookings_cancel_for_block",
    "bookings_cancel_for_suspension",
    "group_room_publish",
    "group_seat_reserve",
    "offering_save",
    "reminders_queue",
    "reservations_expire",
    "room_cancel_by_expert",
    "room_cancel_by_staff",
    "room_catch_up",
    "room_close",
    "room_close_if_due",
    "room_end_by_expert",
    "room_mark_live",
    "room_open",
    "rooms_advance",
    "rooms_close_due",
    "seat_cancel",
    "seat_confirm",
    "seat_payment_authorized",
    "seat_payment_card_saved",
    "seat_reschedule",
]
