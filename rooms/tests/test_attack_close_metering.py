"""The close's ending of open presences, attacked at its boundaries: a late close, a dead
connection among live ones in a group room, a resumed participant, the stale boundary itself,
and a close told an earlier `now` than the last heartbeat."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from accounts.models import User
from accounts.tests.factories import StaffFactory, UserFactory
from billing.models import Settlement
from rooms import services
from rooms.models import MediaLink, Presence, Pricing, Room, Seat
from rooms.services.room_state import presence_stale_before
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    seat_booked,
    seat_pay,
    weekdays_available,
)

START = CALL_START
END = START + dt.timedelta(hours=1)

pytestmark = pytest.mark.django_db


def _at(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


def _present(
    room: Room, user: User, start: dt.datetime, beat: dt.datetime, end: dt.datetime | None = None
) -> Presence:
    return Presence.objects.create(
        room=room,
        user=user,
        connection_id=f"c-{user.pk}-{start.timestamp()}",
        opened_at=start,
        last_heartbeat_at=beat,
        closed_at=end,
        close_reason="stale" if end else "",
    )


def _media(room: Room, client: User, start: dt.datetime) -> None:
    MediaLink.objects.create(
        room=room, client=client, reported_by=client, started_at=start, candidate_type="host"
    )


def _live(room: Room) -> None:
    with time_machine.travel(_at(-5), tick=False):
        services.rooms_advance()
    assert services.room_mark_live(room.pk, at=START)


def _inputs(seat: Seat) -> dict[str, object]:
    assert seat.payment_id is not None
    settlement = Settlement.objects.get(payment_id=seat.payment_id)
    return {"amount": settlement.amount_minor, **settlement.inputs}


def _per_minute_seat() -> Seat:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert, pricing=Pricing.PER_MINUTE, price_minor=200)
    return seat_booked(offering)


def test_a_late_close_bills_connections_that_beat_up_to_the_paid_end_until_the_paid_end() -> None:
    # Both sockets beat every 5 s to the paid end (beats after it are not stored); the close
    # runs a minute late (no worker, and the sockets' own catch-up failed). They were not
    # stale at the paid end, so the call lasted until it: 3544 s of media, 60 started minutes.
    seat = _per_minute_seat()
    room = seat.room
    _present(room, room.expert, _at(0), END - dt.timedelta(seconds=4))
    _present(room, seat.client, _at(0), END - dt.timedelta(seconds=4))
    _live(room)
    _media(room, seat.client, START + dt.timedelta(seconds=56))
    with time_machine.travel(END + dt.timedelta(minutes=1), tick=False):
        assert services.rooms_advance()["closed"] == 1
    inputs = _inputs(seat)
    assert (inputs["billable_seconds"], inputs["amount"]) == (3544, 60 * 200)
    assert set(Presence.objects.values_list("closed_at", "close_reason")) == {(END, "room_closed")}


def test_a_late_close_still_ends_a_connection_dead_long_before_the_paid_end_at_its_last_beat() -> (
    None
):
    seat = _per_minute_seat()
    room = seat.room
    _present(room, room.expert, _at(0), END - dt.timedelta(seconds=4))
    _present(room, seat.client, _at(0), _at(40))
    _live(room)
    _media(room, seat.client, START)
    with time_machine.travel(END + dt.timedelta(minutes=1), tick=False):
        services.rooms_advance()
    client = Presence.objects.get(user=seat.client)
    assert (client.closed_at, client.close_reason) == (_at(40), "stale")
    assert _inputs(seat)["billable_seconds"] == 2400


def test_one_dead_client_in_a_group_room_ends_at_its_last_beat_and_the_others_at_the_close() -> (
    None
):
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    group = OfferingFactory.create(
        expert=expert, capacity=3, pricing=Pricing.PER_MINUTE, price_minor=100
    )
    with time_machine.travel(NOW, tick=False):
        room = services.group_room_publish(expert, group, START)
        alive, dead = (
            seat_pay(services.group_seat_reserve(UserFactory.create(), room.pk)) for _ in range(2)
        )
    _present(room, expert, _at(0), _at(50))
    _present(room, alive.client, _at(0), _at(50))
    _present(room, dead.client, _at(0), _at(20))
    _live(room)
    _media(room, alive.client, START)
    _media(room, dead.client, START)
    with time_machine.travel(_at(50), tick=False):
        services.room_end_by_expert(room.pk, expert)
    assert _inputs(alive)["billable_seconds"] == 3000
    assert _inputs(dead)["billable_seconds"] == 1200
    assert Presence.objects.get(user=expert).close_reason == "room_closed"


def test_a_resumed_client_is_billed_for_both_connections_and_not_the_gap_between() -> None:
    seat = _per_minute_seat()
    room = seat.room
    _present(room, room.expert, _at(0), _at(30))
    _present(room, seat.client, _at(0), _at(20), end=_at(20))
    _present(room, seat.client, _at(20.5), _at(30))
    _live(room)
    _media(room, seat.client, START)
    with time_machine.travel(_at(30), tick=False):
        services.room_end_by_expert(room.pk, room.expert)
    assert _inputs(seat)["billable_seconds"] == 30 * 60 - 30
    first, second = Presence.objects.filter(user=seat.client).order_by("opened_at")
    assert (first.closed_at, first.close_reason) == (_at(20), "stale")
    assert (second.closed_at, second.close_reason) == (_at(30), "room_closed")


def test_a_heartbeat_exactly_at_the_stale_boundary_is_still_live_at_the_close() -> None:
    seat = _per_minute_seat()
    room = seat.room
    boundary = presence_stale_before(_at(30))
    _present(room, room.expert, _at(0), _at(30))
    _present(room, seat.client, _at(0), boundary)
    _live(room)
    _media(room, seat.client, START)
    with time_machine.travel(_at(30), tick=False):
        services.room_end_by_expert(room.pk, room.expert)
    client = Presence.objects.get(user=seat.client)
    assert (client.closed_at, client.close_reason) == (_at(30), "room_closed")
    # A microsecond older is stale.
    assert _inputs(seat)["billable_seconds"] == 1800


def test_a_close_told_an_earlier_now_than_the_last_beat_ends_there() -> None:
    seat = _per_minute_seat()
    room = seat.room
    _present(room, room.expert, _at(0), _at(35))
    _present(room, seat.client, _at(0), _at(35))
    _live(room)
    _media(room, seat.client, START)
    staff = StaffFactory.create()
    with time_machine.travel(_at(36), tick=False):
        services.room_close(room.pk, reason="terminated_by_staff", actor=staff, now=_at(30))
    assert set(Presence.objects.values_list("closed_at", "close_reason")) == {
        (_at(30), "room_closed")
    }
    assert _inputs(seat)["billable_seconds"] == 1800


def test_a_presence_opened_after_the_paid_end_is_closed_where_it_opened_and_bills_nothing() -> None:
    seat = _per_minute_seat()
    room = seat.room
    _present(room, room.expert, _at(0), END)
    _present(room, seat.client, _at(0), _at(10), end=_at(10))
    late = END + dt.timedelta(seconds=30)
    _present(room, seat.client, late, late)
    _live(room)
    _media(room, seat.client, START)
    with time_machine.travel(late + dt.timedelta(seconds=1), tick=False):
        services.rooms_advance()
    assert Presence.objects.get(opened_at=late).closed_at == late
    assert _inputs(seat)["billable_seconds"] == 600
