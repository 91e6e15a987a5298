"""The early minutes are free, but not a free call; and they do not move the booked time
(docs/RULES.md, What is billed; the empty-room close)."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from billing.models import Settlement
from rooms import services
from rooms.models import MediaLink, Presence, Pricing, Room
from rooms.tests.factories import (
    CALL_START,
    OfferingFactory,
    expert_create,
    seat_booked,
    weekdays_available,
)

pytestmark = pytest.mark.django_db


def at(minutes: float) -> dt.datetime:
    return CALL_START + dt.timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("pricing", "expected_minor"),
    [(Pricing.FIXED, 12000), (Pricing.PER_MINUTE, 200)],
)
def test_ten_minutes_of_call_before_the_start_and_50_seconds_after_is_not_free(
    pricing: str, expected_minor: int
) -> None:
    """The lobby opens 10 minutes early and the room goes live as soon as both are in it. A
    client who talks with the expert for 10 minutes before the start and leaves 50 s after it
    had a call, not a failed one: whether it is free (under 60 s) is judged on all the
    connected time, early minutes included. The fixed price is due in full; per minute, only
    the started minutes inside the booked time are priced (the early minutes stay free): one
    minute. The settlement keeps both numbers."""
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    price = 12000 if pricing == Pricing.FIXED else 200
    offering = OfferingFactory.create(expert=expert, pricing=pricing, price_minor=price)
    seat = seat_booked(offering)
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(at(-10), tick=False):
        services.rooms_advance()
    for user in (room.expert, seat.client):
        Presence.objects.create(
            room=room,
            user=user,
            connection_id=f"c{user.pk}",
            opened_at=at(-10),
            last_heartbeat_at=at(50 / 60),
            closed_at=at(50 / 60),
        )
    with time_machine.travel(at(-10), tick=False):
        services.room_mark_live(room.pk, at=at(-10))
    MediaLink.objects.create(
        room=room,
        client=seat.client,
        reported_by=seat.client,
        started_at=at(-10),
        ended_at=at(50 / 60),
    )
    with time_machine.travel(at(50 / 60), tick=False):
        services.room_end_by_expert(room.pk, room.expert)
    assert seat.payment_id is not None
    settlement = Settlement.objects.get(payment_id=seat.payment_id)
    assert settlement.amount_minor == expected_minor, settlement.explanation
    assert settlement.inputs["connected_seconds"] == 650
    assert settlement.inputs["billable_seconds"] == 50


def test_a_room_that_went_live_early_and_emptied_is_not_over_before_its_booked_start() -> None:
    """Both meet in the lobby 10 minutes early (the room goes live), both drop out a minute
    later (a network change, "see you at two"), and come back at 13:57. The booked time has
    not begun and, under the rule, does not move; yet the empty-room close ends the session
    before its start (at the sweep after 5 empty minutes), and the paid session is gone."""
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(at(-10), tick=False):
        services.rooms_advance()
    for user in (room.expert, seat.client):
        Presence.objects.create(
            room=room,
            user=user,
            connection_id=f"c{user.pk}",
            opened_at=at(-10),
            last_heartbeat_at=at(-9),
            closed_at=at(-9),
        )
    with time_machine.travel(at(-10), tick=False):
        services.room_mark_live(room.pk, at=at(-10))
    with time_machine.travel(at(-3), tick=False):
        services.rooms_advance()
    room.refresh_from_db()
    assert room.closed_at is None, (room.state, room.close_reason, room.closed_at)
