"""Booking's one-statement insert raced for real (threads on PostgreSQL): many clients on one
slot, back-to-back slots with and without a buffer, and one client past the unpaid limit."""

from __future__ import annotations

import datetime as dt
from functools import partial

import pytest
import time_machine

from accounts.tests.factories import UserFactory
from rooms import services
from rooms.errors import BookingRefused
from rooms.models import Offering, Room, RoomState, Seat
from rooms.tests.factories import NOW, OfferingFactory, expert_create, weekdays_available
from rooms.tests.races import race, racers_at_once

pytestmark = pytest.mark.django_db(transaction=True)

DAY = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)


def _hour(hour: int) -> dt.datetime:
    return DAY + dt.timedelta(hours=hour)


def _offering(**terms: object) -> Offering:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    return OfferingFactory.create(expert=expert, **terms)


def _live_rooms(offering: Offering) -> list[Room]:
    return list(Room.objects.filter(offering=offering).exclude(state=RoomState.CANCELED))


def test_clients_racing_for_one_slot_get_one_room_and_clear_refusals() -> None:
    offering = _offering()
    clients = [UserFactory.create() for _ in range(racers_at_once(8))]
    with time_machine.travel(NOW, tick=False):
        outcomes = race(
            [partial(services.booking_reserve, c, offering, _hour(10)) for c in clients]
        )
    assert outcomes.count("ok") == 1, outcomes
    assert not [o for o in outcomes if o.startswith("crashed")], outcomes
    assert len(_live_rooms(offering)) == 1
    assert Seat.objects.count() == 1


def test_back_to_back_slots_booked_at_once_both_stand_without_a_buffer() -> None:
    offering = _offering()
    first, second = UserFactory.create(), UserFactory.create()
    with time_machine.travel(NOW, tick=False):
        outcomes = race(
            [
                partial(services.booking_reserve, first, offering, _hour(10)),
                partial(services.booking_reserve, second, offering, _hour(11)),
            ]
        )
    assert outcomes == ["ok", "ok"]


def test_back_to_back_slots_booked_at_once_one_stands_when_a_buffer_joins_them() -> None:
    offering = _offering(buffer_after_minutes=15)
    first, second = UserFactory.create(), UserFactory.create()
    with time_machine.travel(NOW, tick=False):
        outcomes = race(
            [
                partial(services.booking_reserve, first, offering, _hour(10)),
                partial(services.booking_reserve, second, offering, _hour(11)),
            ]
        )
    assert sorted(outcomes)[-1] == "ok" and outcomes.count("ok") == 1, outcomes
    assert len(_live_rooms(offering)) == 1


def test_one_client_racing_many_bookings_gets_no_more_unpaid_than_allowed() -> None:
    offering = _offering()
    client = UserFactory.create()
    hours = [10, 11, 12, 13, 14]
    with time_machine.travel(NOW, tick=False):
        outcomes = race(
            [partial(services.booking_reserve, client, offering, _hour(h)) for h in hours]
        )
    assert outcomes.count("ok") == 2, outcomes  # UNPAID_RESERVATIONS_PER_EXPERT_MAX
    assert not [o for o in outcomes if o.startswith("crashed")], outcomes
    assert Seat.objects.filter(client=client).count() == 2


def test_a_booking_with_a_naive_time_is_refused_with_a_reason() -> None:
    offering = _offering()
    with time_machine.travel(NOW, tick=False), pytest.raises(BookingRefused) as refused:
        services.booking_reserve(UserFactory.create(), offering, _hour(10).replace(tzinfo=None))
    assert "time zone" in str(refused.value)
    assert not Room.objects.exists()
