"""The expert blocks the client at the moment the client's join takes the room live.

Real threads on PostgreSQL. Both writers queue on the room's row lock (the block through the
session's cancel, the join through its admission); the test holds that lock until PostgreSQL
shows both waiting, and lets them in in each order, then in the scheduler's. Either way the pair
is apart, nothing is charged (the call never connected), the hold goes back to the card at the
provider (a cancel command, sent), and no no-show fee is taken.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import time_machine

from billing.models import (
    CommandKind,
    CommandState,
    LocalIntent,
    Payment,
    PaymentCommand,
    PaymentState,
    Settlement,
)
from billing.tests.helpers import commands_run_pending
from moderation import services
from rooms import services as rooms
from rooms.models import Room, RoomEvent, RoomState, Seat, SeatState
from rooms.tests.factories import CALL_START, seat_booked
from rooms.tests.races import lock_held_until_waited_on, queued_in_order, race

JOIN_AT = CALL_START + dt.timedelta(minutes=1)
# The block is not told; the client's seat and session are canceled, and that is what they read.
CANCELED = "This session is canceled."


def _expert_waiting_in_the_lobby() -> tuple[Seat, Room, dict[str, Callable[[], object]]]:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(CALL_START - dt.timedelta(minutes=9), tick=False):
        rooms.rooms_advance()
    rooms.presence_open(room.pk, room.expert, connection_id="c-expert", now=CALL_START)
    assert Room.objects.get(pk=room.pk).state == RoomState.OPEN
    racers: dict[str, Callable[[], object]] = {
        "join": partial(
            rooms.presence_open, room.pk, seat.client, connection_id="c-client", now=JOIN_AT
        ),
        "block": partial(services.block_create, room.expert, seat.client_id, reason="Rude in chat"),
    }
    return seat, room, racers


def _room_lock(room: Room) -> Callable[[], object]:
    return partial(Room.objects.select_for_update().get, pk=room.pk)


def _nothing_charged_hold_given_back(seat: Seat, *, went_live: bool) -> None:
    room = Room.objects.get(pk=seat.room_id)
    seat.refresh_from_db()
    assert seat.payment_id is not None
    settlement = Settlement.objects.get(payment_id=seat.payment_id)
    if went_live:
        # Live for no time: the expert's block ended it at the instant it went live; the call
        # never connected, so it is priced as a call under a minute, not as a no-show.
        assert (room.state, room.close_reason, room.closed_at) == (
            RoomState.CLOSED,
            "ended_by_expert",
            JOIN_AT,
        )
        assert seat.state == SeatState.CONFIRMED
        assert (settlement.amount_minor, settlement.rule) == (0, "under_a_minute")
        assert settlement.inputs["billable_seconds"] == 0
        assert settlement.inputs["outcome"] == "completed"
    else:
        # Canceled before it went live, as if the expert canceled: released in full.
        assert room.state == RoomState.CANCELED
        assert seat.state == SeatState.CANCELED
        assert (settlement.amount_minor, settlement.rule) == (0, "released")
    assert (settlement.platform_fee_minor, settlement.payout_minor) == (0, 0)
    assert list(
        PaymentCommand.objects.filter(payment_id=seat.payment_id).values_list(
            "kind", "amount_minor"
        )
    ) == [(CommandKind.CANCEL, 0)]
    assert not RoomEvent.objects.filter(room=room, kind="client_no_show").exists()
    # The hold is given back at the provider, not only in Parley's books.
    assert set(commands_run_pending()) <= {CommandState.SUCCEEDED}
    payment = Payment.objects.get(pk=seat.payment_id)
    assert (payment.state, payment.captured_minor, payment.released_minor) == (
        PaymentState.CANCELED,
        0,
        12000,
    )
    assert LocalIntent.objects.get(id=payment.intent_id).status == "canceled"
    assert RoomEvent.objects.filter(room=room, kind="pair_blocked").count() == 1


def _story(room: Room) -> list[Any]:
    return list(RoomEvent.objects.filter(room=room).values_list("kind", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_join_that_takes_the_room_live_then_the_block_ends_it_charging_nothing() -> None:
    seat, room, racers = _expert_waiting_in_the_lobby()

    with time_machine.travel(JOIN_AT, tick=False):
        outcomes = queued_in_order(_room_lock(room), [racers["join"], racers["block"]])

    assert outcomes.overlapped()
    assert outcomes == ["ok", "ok"]
    assert {"pair_blocked", "closed"} <= set(_story(room))
    _nothing_charged_hold_given_back(seat, went_live=True)


@pytest.mark.django_db(transaction=True)
def test_a_block_that_cancels_the_lobby_first_refuses_the_join_charging_nothing() -> None:
    seat, room, racers = _expert_waiting_in_the_lobby()

    with time_machine.travel(JOIN_AT, tick=False):
        outcomes = queued_in_order(_room_lock(room), [racers["block"], racers["join"]])

    assert outcomes.overlapped()
    assert outcomes == ["ok", CANCELED]
    assert "went_live" not in _story(room)
    _nothing_charged_hold_given_back(seat, went_live=False)


@pytest.mark.django_db(transaction=True)
def test_a_block_and_a_join_released_together_keep_the_pair_apart_charging_nothing() -> None:
    seat, room, racers = _expert_waiting_in_the_lobby()

    with (
        time_machine.travel(JOIN_AT, tick=False),
        lock_held_until_waited_on(_room_lock(room), waiters=2) as held,
    ):
        outcomes = race([racers["join"], racers["block"]])

    assert held.seen, f"the block and the join never queued together ({held.most_waiting})"
    assert outcomes.overlapped()
    assert outcomes in (["ok", "ok"], [CANCELED, "ok"])
    _nothing_charged_hold_given_back(seat, went_live=outcomes[0] == "ok")
