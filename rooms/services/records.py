"""The guarded transitions and the event log every rooms service shares.

Room and seat states change only through `room_transition` and `seat_transition` (a
conditional UPDATE from the allowed sources, then an event), and on PostgreSQL through
`booking._seat_confirm_statement`, which writes the same guarded UPDATE and its event in one
statement on a booking's hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import Field, Q

from accounts.models import User
from accounts.sql import cursor_prepared, insert_select, saved
from rooms.errors import InvalidTransition
from rooms.models import (
    ROOM_TRANSITIONS,
    SEAT_TRANSITIONS,
    Room,
    RoomEvent,
    RoomState,
    Seat,
    SeatState,
)


def room_transition(
    room: Room,
    target: str,
    actor: User | None,
    *,
    reason: str = "",
    written_with: Sequence[RoomEvent] = (),
    **fields: Any,
) -> None:
    """Move the room to `target` from any allowed source, with `fields` set in the same
    UPDATE (the check constraints see the new state and its fields together). `written_with`:
    unsaved events of the same change (`room_event_new`), written after the transition's own
    when this call made the transition (on PostgreSQL in the UPDATE's statement)."""
    sources = [state for state, targets in ROOM_TRANSITIONS.items() if target in targets]
    if target == RoomState.CANCELED:
        fields["cancel_reason"] = reason
    changed_event = room_event_new(
        room, "state_changed", actor, old=room.state, new=target, reason=reason
    )
    for event in written_with:
        # One change, one moment: the story sorts by time, and the transition comes first.
        event.created_at = changed_event.created_at
    events = [changed_event, *written_with]
    if connection.vendor == "postgresql":
        changed = _room_transition_statement(room, target, sources, fields, events)
    else:
        changed = Room.objects.filter(pk=room.pk, state__in=sources).update(state=target, **fields)
        if changed == 1:
            RoomEvent.objects.bulk_create(events)
    if changed != 1:
        current = Room.objects.values_list("state", flat=True).get(pk=room.pk)
        if current == target:
            return
        raise InvalidTransition(
            f"This session is {RoomState(current).label.lower()}; "
            f"it cannot become {RoomState(target).label.lower()}."
        )
    room.state = target
    for name, value in fields.items():
        setattr(room, name, value)


def _room_transition_statement(
    room: Room, target: str, sources: list[str], fields: dict[str, Any], events: list[RoomEvent]
) -> int:
    """`room_transition`'s guarded UPDATE and its events in one prepared statement; how many
    rooms changed (0 or 1). Every room opens, goes live and closes through it, a storm of
    closes at the top of the hour, and the ORM's UPDATE and INSERT were two round trips and
    more Python than PostgreSQL spent on them. The events are written only if the room
    changed (each is inserted from the row before it), and in their order."""
    assignments = ["state = %s"]
    params: list[Any] = [target]
    for name, value in fields.items():
        field = Room._meta.get_field(name)
        if not isinstance(field, Field):
            raise TypeError(f"A room transition sets the room's columns; {name} is not one.")
        assignments.append(f"{connection.ops.quote_name(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection))
    parts = [
        f"changed AS (UPDATE {connection.ops.quote_name(Room._meta.db_table)}"  # noqa: S608 - names from the model; values are parameters
        f" SET {', '.join(assignments)}"
        f" WHERE id = %s AND state IN ({', '.join(['%s'] * len(sources))}) RETURNING id)"
    ]
    params += [room.pk, *sources]
    source = "changed"
    names = []
    for index, event in enumerate(events):
        sql, more = insert_select(event, source=source)
        source = f"event_{index}"
        names.append(source)
        parts.append(f"{source} AS ({sql} RETURNING id)")
        params += more
    selected = ", ".join(f"{name}.id" for name in names)
    with cursor_prepared() as cursor:
        cursor.execute(
            f"WITH {', '.join(parts)} SELECT {selected} FROM {', '.join(names)}",  # noqa: S608 - as above
            params,
        )
        row = cursor.fetchone()
    if row is None:
        return 0
    for event, pk in zip(events, row, strict=True):
        saved(event, pk)
    return 1


def seat_transition(seat: Seat, target: str, *, where: Q | None = None, **fields: Any) -> None:
    """Move the seat to `target` from any allowed source, with `fields` set in the same UPDATE.
    `where` narrows the guard further (a reservation still past its time): a seat in an
    allowed state that it no longer matches is left as it is, and InvalidTransition says so."""
    sources = [state for state, targets in SEAT_TRANSITIONS.items() if target in targets]
    rows = Seat.objects.filter(pk=seat.pk, state__in=sources)
    if where is not None:
        rows = rows.filter(where)
    changed = rows.update(state=target, **fields)
    if changed != 1:
        current = Seat.objects.values_list("state", flat=True).get(pk=seat.pk)
        if current in sources:
            wanted = SeatState(target).label.lower()
            raise InvalidTransition(f"This booking changed meanwhile; it was not made {wanted}.")
        raise InvalidTransition(f"This booking is already {SeatState(current).label.lower()}.")
    seat.state = target
    for name, value in fields.items():
        setattr(seat, name, value)


def room_event_write(room: Room, kind: str, actor: User | None, **data: Any) -> RoomEvent:
    """One line of the room's story (RoomEvent): what happened, who did it (None: Parley
    itself) and its details. A payment's lines are billing's `payment_event_write`."""
    return RoomEvent.objects.create(room=room, kind=kind, actor=actor, data=data)


def room_event_new(room: Room, kind: str, actor: User | None, **data: Any) -> RoomEvent:
    """`room_event_write` without the write, for a caller that writes several at once."""
    return RoomEvent(room=room, kind=kind, actor=actor, data=data)


# An expert's calendar is locked by the hour: bookings of one expert at different hours do
# not wait for each other. Keys of the one-bigint advisory lock space (the two-key locks, such
# as the client booking lock, are a space of their own): the expert's id above 24 bits of
# hours since 1970 (enough for 1,900 years).
_CALENDAR_HOUR = timedelta(hours=1)
_CALENDAR_HOUR_BITS = 24
_EPSILON = timedelta(microseconds=1)  # the range's end is not in it


def expert_calendar_lock(expert: User, start: datetime, end: datetime) -> None:
    """Serialise changes to the expert's calendar in [start, end) (buffers included) for the
    rest of the transaction.

    The exclusion constraint alone is correct but, with many inserts of one range in flight,
    PostgreSQL can resolve their waits with a deadlock error instead of a constraint error.
    Queuing first on a lock per hour of the range lets the overlap check decide every race
    cleanly: two ranges that overlap share an hour, so they queue on its lock; ranges that do
    not overlap may run together, and the constraint stays as the backstop. The hours are
    locked in ascending order, so two writers never wait for each other crosswise. SQLite
    needs nothing (IMMEDIATE transactions: one writer at a time).
    """
    if connection.vendor != "postgresql":
        return
    first = int(start.timestamp() // _CALENDAR_HOUR.total_seconds())
    last = int((end - _EPSILON).timestamp() // _CALENDAR_HOUR.total_seconds())
    keys = [(expert.pk << _CALENDAR_HOUR_BITS) | hour for hour in range(first, last + 1)]
    with cursor_prepared() as cursor:
        # One round trip: a function scan yields the array's elements in order.
        cursor.execute("SELECT pg_advisory_xact_lock(key) FROM unnest(%s::bigint[]) AS key", [keys])
