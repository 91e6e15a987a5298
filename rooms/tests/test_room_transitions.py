"""A room's state has one writer, `room_transition`: a guarded UPDATE and the change's events,
one statement on PostgreSQL. The events are written only by the call that changed the room,
after the transition's own and in the caller's order, and a close's payment lines (the
settlement, then the capture it asked for) keep theirs."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing.models import PaymentCommand, PaymentEvent, Settlement
from rooms.errors import InvalidTransition
from rooms.models import Room, RoomEvent, RoomState
from rooms.services import records
from rooms.tests.factories import room_closed_after_a_call, seat_booked

pytestmark = pytest.mark.django_db


def _story(room: Room) -> list[tuple[str, dict[str, object]]]:
    return [(e.kind, e.data) for e in RoomEvent.objects.filter(room=room).order_by("pk")]


def test_a_transition_writes_its_events_after_its_own_in_one_statement_at_one_moment() -> None:
    room = Room.objects.get(pk=seat_booked().room_id)
    before = RoomEvent.objects.filter(room=room).count()
    extra = [records.room_event_new(room, f"note_{i}", None, n=i) for i in range(3)]
    with CaptureQueriesContext(connection) as queries:
        records.room_transition(
            room, RoomState.CANCELED, None, reason="client_canceled", written_with=extra
        )
    # SQLite (a laptop) writes them with the ORM: the UPDATE, then one INSERT.
    assert len(queries.captured_queries) == (1 if connection.vendor == "postgresql" else 2)
    written = list(RoomEvent.objects.filter(room=room).order_by("pk"))[before:]
    assert [e.kind for e in written] == ["state_changed", "note_0", "note_1", "note_2"]
    assert written[0].data == {"old": "scheduled", "new": "canceled", "reason": "client_canceled"}
    assert [e.data for e in written[1:]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert len({e.created_at for e in written}) == 1
    # The caller's instances are the rows written.
    assert [e.pk for e in extra] == [e.pk for e in written[1:]]
    stored = Room.objects.get(pk=room.pk)
    assert (stored.state, stored.cancel_reason) == ("canceled", "client_canceled")
    assert (room.state, room.cancel_reason) == ("canceled", "client_canceled")


def test_a_refused_transition_changes_nothing_and_writes_no_event() -> None:
    room = room_closed_after_a_call(seat_booked())
    story = _story(room)
    with pytest.raises(
        InvalidTransition, match="This session is ended; it cannot become lobby open"
    ):
        records.room_transition(
            room, RoomState.OPEN, None, written_with=[records.room_event_new(room, "x", None)]
        )
    assert _story(room) == story
    assert Room.objects.get(pk=room.pk).state == RoomState.CLOSED


def test_a_transition_another_writer_made_first_returns_quietly_and_writes_no_event() -> None:
    room = Room.objects.get(pk=seat_booked().room_id)
    stale = Room.objects.get(pk=room.pk)
    records.room_transition(room, RoomState.CANCELED, None, reason="client_canceled")
    story = _story(room)
    # A second writer that read the room before the first changed it.
    records.room_transition(
        stale,
        RoomState.CANCELED,
        None,
        reason="expert_canceled",
        written_with=[records.room_event_new(stale, "x", None)],
    )
    assert _story(room) == story
    assert Room.objects.get(pk=room.pk).cancel_reason == "client_canceled"


def test_a_close_writes_the_settlement_and_then_the_capture_it_asks_for_in_the_payments_story() -> (
    None
):
    seat = seat_booked()
    room = room_closed_after_a_call(seat)
    assert seat.payment_id is not None
    settlement = Settlement.objects.get(payment_id=seat.payment_id)
    (command,) = PaymentCommand.objects.filter(payment_id=seat.payment_id)
    assert (command.kind, command.amount_minor) == ("capture", settlement.amount_minor)
    events = list(PaymentEvent.objects.filter(payment_id=seat.payment_id).order_by("pk"))
    settled, requested = events[-2:]
    assert (settled.kind, settled.amount_minor) == ("settled", settlement.amount_minor)
    assert settled.data == {"rule": settlement.rule, "explanation": settlement.explanation}
    assert (requested.kind, requested.data) == ("capture_requested", {"command": command.pk})
    assert requested.amount_minor == command.amount_minor
    assert settled.created_at <= requested.created_at
    assert [kind for kind, _ in _story(room)][-2:] == ["state_changed", "closed"]
