"""The sweep finds every room that is due however many are not: hundreds of calls going on, or
lobbies both sides came to, never hide an empty room or a no-show from it, and it reads them in
a few queries, not one per room."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.models import User
from rooms import services
from rooms.models import (
    Offering,
    Presence,
    Pricing,
    Room,
    RoomKind,
    RoomState,
    Seat,
    SeatState,
)
from rooms.tests.factories import CALL_START, seat_booked

pytestmark = pytest.mark.django_db

START = CALL_START
# More than any one page of rooms the sweep ever read at once.
CROWD = 600


def _at(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


def _crowd(state: str, *, met: bool) -> None:
    """CROWD rooms that started 20 minutes before START and are not due at START + 30:
    live calls whose two sides are still beating (`met`), or open lobbies both sides came to
    at different times, so the room never went live and nobody is a no-show."""
    users = User.objects.bulk_create(
        User(email=f"crowd{i}@sweep.test", display_name=f"Crowd {i}", time_zone="UTC")
        for i in range(2 * CROWD)
    )
    experts, clients = users[:CROWD], users[CROWD:]
    starts_at, ends_at = _at(-20), _at(100)
    rooms = Room.objects.bulk_create(
        Room(
            expert=expert,
            kind=RoomKind.PRIVATE,
            title=f"Crowd call {i}",
            starts_at=starts_at,
            ends_at=ends_at,
            blocked_from=starts_at,
            blocked_until=ends_at,
            capacity=1,
            state=state,
            opened_at=starts_at,
            live_at=starts_at if state == RoomState.LIVE else None,
            pricing=Pricing.FIXED,
            price_minor=12000,
            currency="EUR",
            late_cancel_fee_percent=50,
            no_show_fee_percent=50,
        )
        for i, expert in enumerate(experts)
    )
    Seat.objects.bulk_create(
        Seat(
            room=room,
            client=client,
            state=SeatState.CONFIRMED,
            reserved_until=starts_at,
            confirmed_at=starts_at,
        )
        for room, client in zip(rooms, clients, strict=True)
    )
    presences = []
    spans: list[tuple[int, dt.datetime, dt.datetime, dt.datetime | None]]
    for room, client in zip(rooms, clients, strict=True):
        if met:
            # Both in and beating right up to the sweep.
            spans = [
                (room.expert_id, _at(-20), _at(30), None),
                (client.pk, _at(-20), _at(30), None),
            ]
        else:
            # The expert waited and left; the client came after.
            spans = [
                (room.expert_id, _at(-20), _at(-15), _at(-15)),
                (client.pk, _at(-10), _at(-5), _at(-5)),
            ]
        presences += [
            Presence(
                room=room,
                user_id=user_id,
                connection_id=f"crowd-{room.pk}-{user_id}",
                opened_at=opened,
                last_heartbeat_at=beat,
                closed_at=closed,
            )
            for user_id, opened, beat, closed in spans
        ]
    Presence.objects.bulk_create(presences)


def _sweep(at: dt.datetime) -> dict[str, int]:
    with time_machine.travel(at, tick=False), CaptureQueriesContext(connection) as queries:
        done = services.rooms_advance()
    done["queries"] = len(queries)
    return done


def test_an_empty_room_behind_hundreds_of_calls_going_on_is_closed(offering: Offering) -> None:
    _crowd(RoomState.LIVE, met=True)
    seat = seat_booked(offering)
    room = Room.objects.get(pk=seat.room_id)
    for user in (room.expert, seat.client):
        Presence.objects.create(
            room=room,
            user=user,
            connection_id=f"left-{user.pk}",
            opened_at=_at(0),
            last_heartbeat_at=_at(10),
            closed_at=_at(10),
        )
    with time_machine.travel(_at(-10), tick=False):
        services.rooms_advance()
    assert services.room_mark_live(room.pk, at=_at(0))

    done = _sweep(_at(30))

    room.refresh_from_db()
    assert (room.state, room.close_reason) == (RoomState.CLOSED, "empty")
    assert done["closed"] == 1
    assert Room.objects.filter(state=RoomState.LIVE).count() == CROWD
    # Finding it did not cost a query per call going on.
    assert done["queries"] < 60, done


def test_a_no_show_behind_hundreds_of_lobbies_both_sides_came_to_is_closed(
    offering: Offering,
) -> None:
    _crowd(RoomState.OPEN, met=False)
    seat = seat_booked(offering)
    room = Room.objects.get(pk=seat.room_id)
    Presence.objects.create(
        room=room,
        user=seat.client,
        connection_id="waiting-client",
        opened_at=_at(-3),
        last_heartbeat_at=_at(10),
    )
    with time_machine.travel(_at(-10), tick=False):
        services.rooms_advance()

    done = _sweep(_at(10))

    room.refresh_from_db()
    assert (room.state, room.close_reason) == (RoomState.CLOSED, "expert_no_show")
    assert done["closed"] == 1
    assert Room.objects.filter(state=RoomState.OPEN).count() == CROWD
    assert done["queries"] < 60, done
