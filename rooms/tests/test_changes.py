"""Cancel, reschedule and reminders: the money decision, the events and the emails."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine

from accounts.models import OutboundEmail
from accounts.tests.factories import UserFactory
from rooms import services
from rooms.errors import InvalidTransition, RoomsError, SlotTaken
from rooms.models import Offering, Room, RoomEvent, RoomState, Seat, SeatState
from rooms.tests.factories import seat_pay

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_now")]

UTC = dt.UTC
SLOT = dt.datetime(2026, 12, 3, 10, 0, tzinfo=UTC)  # 50 h ahead


@pytest.fixture
def seat(offering: Offering) -> Seat:
    seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
    return seat_pay(seat)


def test_canceling_a_day_or_more_ahead_costs_nothing_and_frees_the_slot(
    seat: Seat, offering: Offering
) -> None:
    services.seat_cancel(seat.pk, actor=seat.client)
    seat.refresh_from_db()
    assert (seat.state, seat.cancel_fee_minor) == (SeatState.CANCELED, 0)
    assert Room.objects.get(pk=seat.room_id).state == RoomState.CANCELED
    # The time is bookable again.
    again = services.booking_reserve(UserFactory.create(), offering, SLOT)
    assert again.room_id != seat.room_id


def test_canceling_late_costs_the_late_fee_and_says_how_it_was_decided(seat: Seat) -> None:
    with time_machine.travel(SLOT - dt.timedelta(hours=3), tick=False):
        services.seat_cancel(seat.pk, actor=seat.client)
    seat.refresh_from_db()
    assert seat.cancel_fee_minor == 6000  # 50 % of 120.00 EUR
    event = RoomEvent.objects.get(room=seat.room, kind="seat_canceled")
    assert event.data["fee_minor"] == 6000
    assert event.data["hours_before"] == 3.0
    assert "then 50% of 12000" in event.data["rule"]


def test_canceling_someone_elses_seat_or_twice_is_refused(seat: Seat) -> None:
    with pytest.raises(RoomsError, match="Only the client who booked"):
        services.seat_cancel(seat.pk, actor=UserFactory.create())
    services.seat_cancel(seat.pk, actor=seat.client)
    with pytest.raises(InvalidTransition, match="already canceled"):
        services.seat_cancel(seat.pk, actor=seat.client)
    assert RoomEvent.objects.filter(kind="seat_canceled").count() == 1


def test_canceling_after_the_start_is_refused(seat: Seat) -> None:
    with (
        time_machine.travel(SLOT + dt.timedelta(minutes=5), tick=False),
        pytest.raises(InvalidTransition, match="has started"),
    ):
        services.seat_cancel(seat.pk, actor=seat.client)
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED


def test_expert_cancel_releases_everyone_in_full_and_offers_to_rebook(
    seat: Seat, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    expert = seat.room.expert
    with (
        time_machine.travel(SLOT - dt.timedelta(hours=1), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.room_cancel_by_expert(seat.room_id, actor=expert)
    seat.refresh_from_db()
    assert (seat.state, seat.cancel_fee_minor, seat.cancel_reason) == (
        SeatState.CANCELED,
        0,
        "expert_canceled",
    )
    to_client = next(m for m in mailoutbox if m.to == [seat.client.email])
    assert "Nothing is charged. You can book another time" in to_client.body
    assert f"/experts/{expert.expert_profile.slug}/" in to_client.body
    assert "METHOD:CANCEL" in to_client.attachments[0][1]
    assert "STATUS:CANCELLED" in to_client.attachments[0][1]


def test_only_the_expert_can_cancel_the_session(seat: Seat) -> None:
    with pytest.raises(RoomsError, match="Only the expert"):
        services.room_cancel_by_expert(seat.room_id, actor=seat.client)
    assert Room.objects.get(pk=seat.room_id).state == RoomState.SCHEDULED


def test_rescheduling_moves_the_room_keeps_the_seat_and_updates_the_invitation(
    seat: Seat, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    new_start = SLOT + dt.timedelta(days=1, hours=2)
    with django_capture_on_commit_callbacks(execute=True):
        room = services.seat_reschedule(seat.pk, actor=seat.client, new_start=new_start)
    assert (room.pk, room.starts_at, room.sequence) == (seat.room_id, new_start, 1)
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    event = RoomEvent.objects.get(room=room, kind="rescheduled")
    assert event.data["old_starts_at"] == SLOT.isoformat()
    invitation = mailoutbox[0].attachments[0][1]
    assert f"UID:room-{room.pk}@parley" in invitation
    assert "SEQUENCE:1" in invitation
    assert "DTSTART:20261204T120000Z" in invitation


def test_rescheduling_into_a_taken_time_is_refused_and_nothing_moves(
    seat: Seat, offering: Offering
) -> None:
    other = SLOT + dt.timedelta(hours=3)
    services.booking_reserve(UserFactory.create(), offering, other)
    with pytest.raises(SlotTaken):
        services.seat_reschedule(seat.pk, actor=seat.client, new_start=other)
    room = Room.objects.get(pk=seat.room_id)
    assert (room.starts_at, room.sequence) == (SLOT, 0)
    assert not RoomEvent.objects.filter(kind="rescheduled").exists()


def test_rescheduling_within_a_day_of_the_start_is_refused(seat: Seat) -> None:
    with (
        time_machine.travel(SLOT - dt.timedelta(hours=5), tick=False),
        pytest.raises(InvalidTransition, match="canceled .* but not moved"),
    ):
        services.seat_reschedule(seat.pk, actor=seat.client, new_start=SLOT + dt.timedelta(days=1))


def test_reminders_go_out_once_a_day_before_and_fifteen_minutes_before(seat: Seat) -> None:
    assert services.reminders_queue() == 0
    with time_machine.travel(SLOT - dt.timedelta(hours=23, minutes=59), tick=False):
        assert services.reminders_queue() == 2  # client and expert
        assert services.reminders_queue() == 0
    with time_machine.travel(SLOT - dt.timedelta(minutes=14), tick=False):
        assert services.reminders_queue() == 2
        assert services.reminders_queue() == 0
    keys = sorted(
        OutboundEmail.objects.filter(key__startswith="reminder").values_list("key", flat=True)
    )
    assert [key.split(":")[0] for key in keys] == ["reminder-15min"] * 2 + ["reminder-24h"] * 2


def test_a_booking_made_inside_the_day_gets_no_day_before_reminder(offering: Offering) -> None:
    soon = dt.datetime(2026, 12, 1, 14, 0, tzinfo=UTC)
    seat = services.booking_reserve(UserFactory.create(), offering, soon)
    seat_pay(seat)
    assert services.reminders_queue() == 0
    with time_machine.travel(soon - dt.timedelta(minutes=10), tick=False):
        assert services.reminders_queue() == 2
