"""The room's life after booking: the lobby opens, the call goes live, the room closes.

Closing is one transaction: the room's state, every seat's settlement (through billing's
`payment_settle_call`, which writes the capture or cancel command) and the events commit
together or not at all. Closing twice, or from two processes at once, settles once: the
payments and the room are locked first, and a closed room is returned as it is.

Timed transitions run from `rooms_advance` (the beat sweep every 10 s, and a task scheduled
for the exact moment when it is near); both may run at once without harm. They also follow the
clock without Celery: admission, the room page and the sockets call `room_catch_up`, which does
for one room what the sweep would do now.

Every transition reads its time after it holds its locks: a presence or media link committed
while it waited starts no later than that moment, so ending it there never ends it before it
began. A caller passing `now` (tests) is clamped the same way: nothing ends before it starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Exists, F, Model, OuterRef, Q, Value
from django.db.models.functions import Greatest, Least
from django.utils import timezone

from accounts.models import User
from accounts.sql import columns, cursor_prepared, load
from billing import services as billing
from billing.models import Payment, PaymentState
from rooms import broadcast, metering, signals
from rooms.errors import InvalidTransition, NotAllowed
from rooms.models import (
    CloseReason,
    MediaLink,
    Presence,
    Room,
    RoomState,
    Seat,
    SeatState,
)
from rooms.services.records import room_event_new, room_transition, seat_transition

logger = logging.getLogger(__name__)

Ended = TypeVar("Ended", Presence, MediaLink)

# How far ahead a room's exact moment is handed to Celery as an ETA task. A Redis broker
# redelivers an unacknowledged message after its visibility timeout (1 h by default), so an ETA
# further out would be delivered again every hour until it runs. Moments further out are left to
# the beat sweep (every 10 s), which needs no message to survive.
TIMER_ETA_HORIZON = timedelta(minutes=50)


def room_timers_schedule(room: Room, *, now: datetime | None = None) -> None:
    """After commit, ask Celery to advance the room at its exact moments (lobby opening,
    no-show check, paid end) that are within TIMER_ETA_HORIZON; the beat sweep every 10 s
    covers the later ones and any task that was lost."""
    from rooms.tasks import rooms_advance as advance_task

    now = now or timezone.now()
    moments = [
        moment
        for moment in (
            room.starts_at - timedelta(minutes=settings.LOBBY_OPENS_MINUTES),
            room.starts_at + timedelta(minutes=settings.NO_SHOW_MINUTES),
            room.ends_at,
        )
        if now <= moment <= now + TIMER_ETA_HORIZON
    ]

    def schedule() -> None:
        for moment in moments:
            advance_task.apply_async(eta=moment)

    if moments:
        transaction.on_commit(schedule, robust=True)


def room_open(room_id: int, *, now: datetime | None = None) -> bool:
    """Open the lobby (from start − LOBBY_OPENS_MINUTES). Returns whether this call did it."""
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room_id)
        now = now or timezone.now()
        lobby = timedelta(minutes=settings.LOBBY_OPENS_MINUTES)
        if room.state != RoomState.SCHEDULED or room.starts_at > now + lobby:
            return False
        room_transition(room, RoomState.OPEN, None, opened_at=now)
    return True


def room_mark_live(room_id: int, *, at: datetime) -> bool:
    """The expert and a seat holder are both present for the first time: the live window
    starts. Returns whether this call did it (a second call changes nothing)."""
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room_id)
        if room.state != RoomState.OPEN:
            return False
        room_transition(room, RoomState.LIVE, None, live_at=at)
        broadcast.room_tell(room.pk, room_state_message(room))
    return True


def room_state_message(room: Room) -> dict[str, Any]:
    """`room_state` of docs/SIGNALING.md. A room may go live before its booked start; the page
    needs the start too, since the meter and the clock count from it."""
    return {
        "type": "room_state",
        "state": room.state,
        "live_at": room.live_at.isoformat() if room.live_at else None,
        "starts_at": room.starts_at.isoformat(),
        "ends_at": room.ends_at.isoformat(),
    }


def room_close(
    room_id: int, *, reason: str, actor: User | None = None, now: datetime | None = None
) -> Room:
    """Close the room and settle every seat, in one transaction; safe to call any number of
    times from anywhere (the first close stands)."""
    return _room_close(room_id, reason=reason, actor=actor, now=now)[0]


def room_close_if_due(room_id: int) -> tuple[Room, bool]:
    """Close the room if a timed close (the paid end, a no-show, empty) is due, deciding which
    under the room's lock; returns the room and whether this call closed it. The sweep and
    `room_catch_up` read the room before they lock it, and a join or leave that commits while
    they wait changes the answer: a room found empty that someone has just joined stays open."""
    return _room_close(room_id, reason=None, actor=None, now=None)


def _room_close(
    room_id: int,
    *,
    reason: str | None,
    actor: User | None,
    now: datetime | None,
    claimed: bool = False,
) -> tuple[Room, bool]:
    """`room_close`, also saying whether this call closed the room; with no reason, the timed
    close that is due under the lock, if any. `claimed` (a sweep's batch): a room another
    sweep is closing right now is not waited for (ClaimedElsewhere); that one closes it."""
    if reason is not None and reason not in CloseReason.values:
        raise InvalidTransition(f"{reason!r} is not a reason a room closes for.")
    with transaction.atomic():
        if claimed and not _sweep_claim(room_id):
            raise ClaimedElsewhere(room_id)
        # The lock order of every writer: payments, then the room, then its seats.
        payments, room = _payments_and_room_lock(room_id)
        if room.state == RoomState.CLOSED:
            return room, False
        if reason is None and room.state not in (RoomState.OPEN, RoomState.LIVE):
            return room, False
        if room.state not in (RoomState.OPEN, RoomState.LIVE):
            raise InvalidTransition(
                f"This session is {RoomState(room.state).label.lower()}; only an open or live "
                "room can close."
            )
        # Read after the locks: every presence and media link committed before them started
        # no later than this (their writers take the room's lock too).
        ran_at = timezone.now()
        if reason is None:
            reason = _close_reason_due(room, ran_at)
            if reason is None:
                return room, False
        # The paid time is the most a call can last: a close that runs late (the sweep was
        # down) still ends the live window, the presences and the media links at the paid end.
        end = min(now or ran_at, room.ends_at)
        seats = _seats_to_settle(room, payments)
        # Every open presence and media link ends there; the room's whole history comes back
        # from the same statements, read once for all its seats. Stale means stale at the end:
        # a late close finds every socket silent since the paid end (beats past it are not
        # stored), and those that beat up to it were in the call until it.
        history = _history_end(room, end, presence_stale_before(end))
        settled = [_seat_settle(room, seat, end, actor, reason, history) for seat in seats]
        # closed_at is where the call ended for billing; ran_at is when the close happened.
        events = [
            room_event_new(
                room, "closed", actor, reason=reason, seats=settled, ran_at=ran_at.isoformat()
            )
        ]
        if reason == CloseReason.EXPERT_NO_SHOW:
            events.append(room_event_new(room, "expert_no_show", None, expert=room.expert_id))
        room_transition(
            room,
            RoomState.CLOSED,
            actor,
            reason=reason,
            written_with=events,
            closed_at=end,
            close_reason=reason,
        )
        # Moderation files the automatic report on an expert no-show.
        signals.room_closed.send(sender=Room, room=room, reason=reason)
        charges = {
            str(seat["client"]): {
                "amount_minor": seat.get("charged_minor", 0),
                "currency": room.currency,
                "connected_seconds": seat.get("connected_seconds", 0),
                "billable_seconds": seat.get("billable_seconds", 0),
            }
            for seat in settled
        }
        # Every socket of the room hears why and what it cost, then closes.
        broadcast.room_send(room.pk, {"type": "room.ended", "reason": reason, "charges": charges})
    return room, True


class ClaimedElsewhere(Exception):
    """Another sweep is closing this room at this moment."""


# The first key of the two-key advisory locks a sweep claims a room's close with ("Swee").
_SWEEP_CLAIM_CLASS = 0x53776565


def _sweep_claim(room_id: int) -> bool:
    """Claim the room's close for this sweep until the transaction ends, or say that another
    sweep holds it. Sweeps run on every worker at once when many rooms are due together; one
    that queued on a room another is closing would wait for nothing (it finds it closed). Only
    sweeps claim: a close asked for by a person (the expert, staff) waits its turn as before.
    SQLite needs nothing: it runs one writer at a time."""
    if connection.vendor != "postgresql":
        return True
    with cursor_prepared() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [_SWEEP_CLAIM_CLASS, room_id])
        return bool(cursor.fetchone()[0])


def room_end_by_expert(room_id: int, user: User, *, now: datetime | None = None) -> Room:
    """The expert's "end for everyone"."""
    if not Room.objects.filter(pk=room_id, expert=user).exists():
        raise NotAllowed("Only the session's expert can end it for everyone.")
    return room_close(room_id, reason=CloseReason.ENDED_BY_EXPERT, actor=user, now=now)


def _seats_to_settle(room: Room, payments: dict[int, Payment]) -> list[Seat]:
    """The room's holding seats, locked, each with its payment from those locked first. A
    seat that took a payment after the payments were found has it locked now."""
    seats = _seats_lock(room)
    missing = [s.payment_id for s in seats if s.payment_id and s.payment_id not in payments]
    if missing:
        payments = {**payments, **billing.payments_lock(missing)}
    for seat in seats:
        if seat.payment_id is not None:
            seat.payment = payments[seat.payment_id]
    return seats


# The seats that hold a place in their room, and so are settled when it closes.
_HOLDING = (SeatState.RESERVED, SeatState.CONFIRMED)


def _payments_and_room_lock(room_id: int) -> tuple[dict[int, Payment], Room]:
    """The close's first locks, in every writer's order: the payments of the room's holding
    seats, found and locked in one statement and read with their settlements, then the room.
    On PostgreSQL both are prepared statements of our own (`cursor_prepared`): every room
    closes once, a storm of them at the top of the hour, and the ORM spent more time building
    these queries than PostgreSQL spent running them. SQLite (a laptop) keeps the ORM, which
    locks nothing there: it has one writer at a time."""
    if connection.vendor != "postgresql":
        holding = Seat.objects.filter(room_id=room_id, state__in=_HOLDING)
        payments = billing.payments_lock(holding.values("payment_id"))
        return payments, Room.objects.select_for_update().get(pk=room_id)
    payments = billing.payments_lock_selected(
        f"SELECT payment_id FROM {_table(Seat)} WHERE room_id = %s AND state IN (%s, %s)",  # noqa: S608 - names from the models; values are parameters
        [room_id, *_HOLDING],
    )
    with cursor_prepared() as cursor:
        cursor.execute(
            f"SELECT {columns(Room, 'room')} FROM {_table(Room)} room"  # noqa: S608 - as above
            " WHERE room.id = %s FOR UPDATE",
            [room_id],
        )
        row = cursor.fetchone()
    if row is None:
        raise Room.DoesNotExist(f"There is no room {room_id}.")
    return payments, load(Room, row)[0]


def _seats_lock(room: Room) -> list[Seat]:
    """The room's holding seats, locked, in their usual order; a prepared statement on
    PostgreSQL, as `_payments_and_room_lock`'s are."""
    if connection.vendor != "postgresql":
        return list(Seat.objects.select_for_update().filter(room=room, state__in=_HOLDING))
    with cursor_prepared() as cursor:
        cursor.execute(
            f"SELECT {columns(Seat, 'seat')} FROM {_table(Seat)} seat"  # noqa: S608 - names from the models; values are parameters
            " WHERE seat.room_id = %s AND seat.state IN (%s, %s)"
            " ORDER BY seat.created_at, seat.id FOR UPDATE",
            [room.pk, *_HOLDING],
        )
        return [load(Seat, row)[0] for row in cursor.fetchall()]


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _history_end(room: Room, end: datetime, stale_before: datetime) -> History:
    """End the room's open presences and media links at `end`, except a connection already
    stale by then (silent since before `stale_before`, as the sweeper would say): it
    ended at its last heartbeat, as the sweeper would have closed it had it run (a process that
    died, a sweep that is late or a worker that is down must not bill its silence)."""
    if connection.vendor != "postgresql":
        # SQLite (a laptop without DATABASE_URL) has no UPDATE inside WITH: three statements.
        open_presences = Presence.objects.filter(room=room, closed_at__isnull=True)
        open_presences.filter(last_heartbeat_at__lt=stale_before).update(
            closed_at=Greatest(Least(F("last_heartbeat_at"), Value(end)), F("opened_at")),
            close_reason="stale",
        )
        open_presences.update(
            closed_at=Greatest(Value(end), F("opened_at")), close_reason="room_closed"
        )
        MediaLink.objects.filter(room=room, ended_at__isnull=True).update(
            ended_at=Greatest(Value(end), F("started_at"))
        )
        return History.of(room)
    stale = "last_heartbeat_at < %s"
    return History(
        _rows_end(
            Presence,
            room,
            stop="closed_at",
            assignments=(
                f"closed_at = GREATEST(opened_at, CASE WHEN {stale} "
                "THEN LEAST(last_heartbeat_at, %s) ELSE %s END), "
                f"close_reason = CASE WHEN {stale} THEN 'stale' ELSE 'room_closed' END"
            ),
            params=[stale_before, end, end, stale_before],
        ),
        _rows_end(
            MediaLink,
            room,
            stop="ended_at",
            assignments="ended_at = GREATEST(started_at, %s)",
            params=[end],
        ),
    )


def _rows_end(
    model: type[Ended], room: Room, *, stop: str, assignments: str, params: list[Any]
) -> list[Ended]:
    """End the room's open rows of `model` (presences, media links) with `assignments` (SQL
    with `params`), and return all its rows as they are now: one round trip, where an UPDATE
    and a SELECT take two, prepared as the close's locks are. The outer SELECT sees the table
    as it was before the UPDATE in the same statement, so rows ended earlier come from it and
    rows ended now from RETURNING, each once. The SQL is our own, never input."""
    table = _table(model)
    every = columns(model, "t")
    with cursor_prepared() as cursor:
        cursor.execute(
            f"WITH ended AS (UPDATE {table} t SET {assignments}"  # noqa: S608 - names from the models; values are parameters
            f" WHERE t.room_id = %s AND t.{stop} IS NULL RETURNING {every})"
            f" SELECT * FROM ended UNION ALL SELECT {every} FROM {table} t"
            f" WHERE t.room_id = %s AND t.{stop} IS NOT NULL",
            [*params, room.pk, room.pk],
        )
        return [load(model, found)[0] for found in cursor.fetchall()]


@dataclass(frozen=True)
class History:
    """What the server saw of a room: its presences and media links."""

    presences: list[Presence]
    media_links: list[MediaLink]

    @classmethod
    def of(cls, room: Room) -> History:
        return cls(list(Presence.objects.filter(room=room)), list(room.media_links.all()))


def _seat_settle(
    room: Room, seat: Seat, now: datetime, actor: User | None, reason: str, history: History
) -> dict[str, Any]:
    """Price one seat from what the server saw, and hand it to billing. The seat's payment is
    locked by the close (`_seats_to_settle`), so billing takes it as it is."""
    if seat.state == SeatState.RESERVED:
        # Never paid: the reservation ends with the room, and so does its payment.
        seat_transition(seat, SeatState.EXPIRED)
        if seat.payment is not None:
            billing.payment_release(
                seat.payment, reason="the session ended before payment", locked=True
            )
        return {"seat": seat.pk, "client": seat.client_id, "outcome": "unpaid"}
    inputs = {"seat": seat.pk, "client": seat.client_id, **seat_meter(room, seat, now, history)}
    if seat.payment is None:
        return inputs
    if seat.payment.state != PaymentState.AUTHORIZED:
        billing.payment_release(
            seat.payment, reason="no hold to charge at close", actor=actor, locked=True
        )
        return {**inputs, "charged_minor": 0}
    if inputs["outcome"] == "client_no_show" and reason == CloseReason.TERMINATED_BY_STAFF:
        # Staff cut the session short: a client who had not come yet might still have, so
        # the no-show fee does not apply.
        billing.payment_release(
            seat.payment, reason="Parley staff ended the session before this client joined",
            actor=actor, locked=True,
        )  # fmt: skip
        return {**inputs, "charged_minor": 0}
    settlement = billing.payment_settle_call(
        seat.payment,
        pricing=room.pricing,
        price_minor=room.price_minor,
        cap_minor=room.max_amount_minor,
        connected_seconds=inputs["connected_seconds"],
        billable_seconds=inputs["billable_seconds"],
        outcome=inputs["outcome"],
        no_show_fee_percent=room.no_show_fee_percent,
        currency=room.currency,
        actor=actor,
        locked=True,
    )
    return {**inputs, "charged_minor": settlement.amount_minor}


def seat_meter(
    room: Room, seat: Seat, now: datetime, history: History | None = None
) -> dict[str, Any]:
    """What the server saw of this seat: its outcome, its connected seconds (the whole live
    window, which decide whether the call is charged at all) and its billable seconds (inside
    the booked time, which are priced per minute), with the inputs. `history`: the room's
    presences and media links when the caller has read them already (the close)."""
    if history is None:
        history = History.of(room)
    expert = _presence_intervals(history, room.expert_id, now)
    client = _presence_intervals(history, seat.client_id, now)
    media = [
        metering.to_micros(link.started_at, link.ended_at or now)
        for link in history.media_links
        if link.client_id == seat.client_id
    ]
    window = (0, 0)
    if room.live_at:
        window = metering.to_micros(room.live_at, max(room.live_at, room.closed_at or now))
    # The early minutes are free: a room that went live in the lobby is metered from the
    # booked start, and never past the paid end.
    booked = metering.to_micros(room.starts_at, room.ends_at)
    billable = metering.billable_time(
        live_window=window,
        booked=booked,
        expert_presence=expert,
        client_presence=client,
        media_links=media,
    )
    connected = metering.connected_time(
        live_window=window,
        expert_presence=expert,
        client_presence=client,
        media_links=media,
    )
    # Who came is whether a connection was admitted, not how long it lasted: a join that a
    # close (a block, the paid end) cut at the very instant it was admitted still came, as
    # `_no_show_reason` counts it too; it is billed nothing, but it is never a no-show.
    came = {presence.user_id for presence in history.presences}
    if room.expert_id not in came:
        outcome = "expert_no_show"
    elif seat.client_id not in came:
        outcome = "client_no_show"
    else:
        outcome = "completed"
    return {
        "outcome": outcome,
        "connected_seconds": metering.whole_seconds(connected),
        "billable_seconds": metering.whole_seconds(billable),
        "billable_exact_seconds": billable / metering.SECOND,
        "rounding": "the exact total, rounded down to whole seconds",
        "live_window": metering.as_seconds([window]),
        "booked": metering.as_seconds([booked]),
        "expert_presence": metering.as_seconds(expert),
        "client_presence": metering.as_seconds(client),
        "media_links": metering.as_seconds(media),
    }


def _presence_intervals(history: History, user_id: int, now: datetime) -> list[metering.Interval]:
    stale_before = presence_stale_before(now)
    intervals = []
    for presence in history.presences:
        if presence.user_id != user_id:
            continue
        end = presence.closed_at
        if end is None:
            # Still open: it lasts until now, unless its heartbeats stopped (then until the
            # last one, as the sweeper would have closed it).
            end = now if presence.last_heartbeat_at >= stale_before else presence.last_heartbeat_at
        intervals.append(metering.to_micros(presence.opened_at, end))
    return intervals


# Heartbeats reach the database in batches (rooms/socket_database.py): a beat waits at most one
# flush interval for its UPDATE, and a flush that takes longer than another interval is a
# database in trouble. The sweeper waits out both before it calls a connection stale, so a
# socket that beats is never swept because its beat was still in its process's batch; the
# presence still ends at its last heartbeat, as the beat's own time is what is stored.
HEARTBEAT_FLUSH_SECONDS = 1.0
HEARTBEAT_FLUSH_MARGIN_SECONDS = 2 * HEARTBEAT_FLUSH_SECONDS


def presence_stale_before(now: datetime) -> datetime:
    """Connections whose last stored heartbeat is older than this are stale: silent for
    HEARTBEAT_STALE_SECONDS, plus the time a beat may wait in its process's batch."""
    silent = settings.HEARTBEAT_STALE_SECONDS + HEARTBEAT_FLUSH_MARGIN_SECONDS
    return now - timedelta(seconds=silent)


# How many due rooms one sweep closes itself; more due at once (sessions end on the hour) are
# handed to the other workers in batches of this size, so every worker shares the storm.
CLOSE_BATCH = 25
# Rooms of each kind (past their end, no-show, empty) one sweep takes; more wait for the next
# sweep, ten seconds later.
DUE_PER_SWEEP = 5000


def rooms_advance(
    now: datetime | None = None, *, hand_off: Callable[[list[int]], None] | None = None
) -> dict[str, int]:
    """The timed transitions that are due (beat every 10 s, and tasks at the exact moments).

    Each room moves in its own transaction through a guarded service, so two sweeps, or a
    sweep and a task, running at once do each thing once. A room that fails is logged and left
    for the next run; it never stops the others. With `hand_off` (the Celery task), rooms due
    beyond the first CLOSE_BATCH are given to it in batches, for `rooms_close_due` elsewhere;
    the count says how many ("handed_off").
    """
    now = now or timezone.now()
    done = {"opened": 0, "closed": 0, "failed": 0}
    lobby = timedelta(minutes=settings.LOBBY_OPENS_MINUTES)
    for room_id in Room.objects.filter(
        state=RoomState.SCHEDULED, starts_at__lte=now + lobby
    ).values_list("pk", flat=True)[:500]:
        try:
            done["opened"] += room_open(room_id)
        except SoftTimeLimitExceeded:
            raise
        except Exception:
            logger.exception("Opening room %s failed; the next sweep tries again.", room_id)
            done["failed"] += 1
    due = _rooms_due_to_close(now)
    if hand_off is not None:
        done["handed_off"] = 0
        keep, later = due[:CLOSE_BATCH], due[CLOSE_BATCH:]
        for start in range(0, len(later), CLOSE_BATCH):
            batch = later[start : start + CLOSE_BATCH]
            try:
                hand_off(batch)
            except Exception:
                # The broker is away: this sweep closes them itself.
                logger.exception("Handing %s due rooms to other workers failed.", len(batch))
                keep += batch
                continue
            done["handed_off"] += len(batch)
        due = keep
    closed = rooms_close_due(due)
    done["closed"], done["failed"] = closed["closed"], done["failed"] + closed["failed"]
    return done


def rooms_close_due(room_ids: list[int]) -> dict[str, int]:
    """Close each of these rooms whose timed close is due, each in its own transaction, the
    reason decided again under its lock (they were found due on reads made before it). A room
    another sweep is closing at this moment is skipped, not waited for. The sockets hear of the
    closes together once the batch is done: one send for the batch, not one per room; the
    capture (or cancel) commands of its seats go to the money workers in one message too."""
    done = {"closed": 0, "failed": 0}
    # The sockets' messages and the seats' capture commands leave when the batch is done.
    with broadcast.batched(), billing.commands_batched():
        for room_id in room_ids:
            try:
                done["closed"] += _room_close(
                    room_id, reason=None, actor=None, now=None, claimed=True
                )[1]
            except ClaimedElsewhere:
                continue
            except SoftTimeLimitExceeded:
                # The task's time is up: stop here, the next tick goes on with the rest.
                raise
            except Exception:
                logger.exception("Closing room %s failed; the next sweep tries again.", room_id)
                done["failed"] += 1
    return done


def room_catch_up(room_id: int) -> Room:
    """Do for one room what the sweep would do now: open its lobby once the lobby time has come,
    close it when a close is due (the paid end, a no-show, empty). The room follows the clock
    even when no Celery worker runs: admission, the room page and the sockets call this."""
    now = timezone.now()
    room = Room.objects.get(pk=room_id)
    lobby = timedelta(minutes=settings.LOBBY_OPENS_MINUTES)
    if room.state == RoomState.SCHEDULED and room.starts_at <= now + lobby:
        room_open(room_id)
        room = Room.objects.get(pk=room_id)
    if _close_reason_due(room, now) is not None:
        room = room_close_if_due(room_id)[0]
    return room


def _no_show_reason(room: Room) -> str | None:
    """Who never came to an open lobby: the expert, or every client holding a seat."""
    ever = set(Presence.objects.filter(room=room).values_list("user_id", flat=True))
    holders = set(
        Seat.objects.filter(room=room, state=SeatState.CONFIRMED).values_list(
            "client_id", flat=True
        )
    )
    if room.expert_id not in ever:
        return CloseReason.EXPERT_NO_SHOW
    if not ever & holders:
        return CloseReason.CLIENT_NO_SHOW
    return None


def _close_reason_due(room: Room, now: datetime) -> str | None:
    """Why this room must close now, if it must."""
    if room.state not in (RoomState.OPEN, RoomState.LIVE):
        return None
    if room.ends_at <= now:
        # A lobby nobody met in that reaches its end (the sweep was late, or the session is
        # shorter than the no-show wait) is still a no-show, not a call that used its time.
        reason = _no_show_reason(room) if room.state == RoomState.OPEN else None
        return reason or CloseReason.TIME_LIMIT
    if room.state == RoomState.OPEN:
        if room.starts_at <= now - timedelta(minutes=settings.NO_SHOW_MINUTES):
            return _no_show_reason(room)
        return None
    empty_timeout = timedelta(seconds=settings.EMPTY_TIMEOUT_SECONDS)
    # The booked time does not move when the room goes live early: the empty timer runs from
    # the later of the last presence's end and the booked start, so people who met early and
    # dropped out have until start + the timeout to come back.
    if now < room.starts_at + empty_timeout:
        return None
    # Someone is in (a connection still beating), or left less than the timeout ago.
    if not Presence.objects.filter(room=room).filter(_presence_recent(now)).exists():
        return CloseReason.EMPTY
    return None


def _rooms_due_to_close(now: datetime) -> list[int]:
    """Rooms whose close looks due, on reads made without locks: every open or live room past
    its paid end (always due, whatever the reason turns out to be), earliest first; then open
    lobbies past the no-show wait that someone never came to, and live rooms empty for the
    timeout. The reason is decided again under each room's lock when it closes.

    Each kind is one query, whatever the number of rooms: the lobbies and live rooms that are
    *not* due (calls going on, lobbies both sides came to) are filtered out in the database,
    so no number of them can crowd out one that is due."""
    active = Room.objects.filter(state__in=(RoomState.OPEN, RoomState.LIVE))
    due = list(
        active.filter(ends_at__lte=now)
        .order_by("ends_at", "pk")
        .values_list("pk", flat=True)[:DUE_PER_SWEEP]
    )
    no_show_at = now - timedelta(minutes=settings.NO_SHOW_MINUTES)
    came = Presence.objects.filter(room=OuterRef("pk"))
    a_holder_came = Seat.objects.filter(
        room=OuterRef("pk"),
        state=SeatState.CONFIRMED,
        client__presences__room=OuterRef("pk"),
    )
    due += (
        active.filter(state=RoomState.OPEN, starts_at__lte=no_show_at, ends_at__gt=now)
        .filter(~Exists(came.filter(user=OuterRef("expert"))) | ~Exists(a_holder_came))
        .order_by("starts_at", "pk")
        .values_list("pk", flat=True)[:DUE_PER_SWEEP]
    )
    empty_since = now - timedelta(seconds=settings.EMPTY_TIMEOUT_SECONDS)
    due += (
        active.filter(state=RoomState.LIVE, ends_at__gt=now, starts_at__lte=empty_since)
        .filter(~Exists(came.filter(_presence_recent(now))))
        .order_by("starts_at", "pk")
        .values_list("pk", flat=True)[:DUE_PER_SWEEP]
    )
    return due


def _presence_recent(now: datetime) -> Q:
    """A presence that keeps its room from being empty at `now`: a connection still beating,
    or one that left (a stale one counts as left at its last heartbeat) less than the empty
    timeout ago."""
    empty_since = now - timedelta(seconds=settings.EMPTY_TIMEOUT_SECONDS)
    stale_before = presence_stale_before(now)
    return (
        Q(closed_at__isnull=True, last_heartbeat_at__gt=stale_before)
        | Q(closed_at__gt=empty_since)
        | Q(closed_at__isnull=True, last_heartbeat_at__gt=empty_since)
    )
