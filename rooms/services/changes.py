"""After booking: cancel (the client's or the expert's), reschedule, reminders."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from billing import selectors as billing_selectors
from billing import services as billing
from billing.models import PaymentState
from billing.pricing import format_money
from rooms import broadcast, emails, selectors
from rooms.availability import Slot
from rooms.emails import CanceledBy
from rooms.errors import InvalidTransition, RoomsError, SlotTaken
from rooms.models import (
    HOLDING_STATES,
    Presence,
    Room,
    RoomKind,
    RoomState,
    Seat,
    SeatState,
)
from rooms.services.booking import (
    NO_OVERLAP_CONSTRAINT,
    rooms_release_stale,
    slot_alternatives,
    slot_check_policy,
)
from rooms.services.records import (
    expert_calendar_lock,
    room_event_write,
    room_transition,
    seat_transition,
)
from rooms.services.room_state import room_timers_schedule


def seat_cancel(seat_id: int, *, actor: User, expected_fee_minor: int | None = None) -> Seat:
    """The client cancels their seat. The policy decides the fee; a private room is freed.

    `expected_fee_minor` is the fee the client was shown; if the clock crossed the free
    cancellation deadline since, the client is asked again instead of charged by surprise.
    """
    with transaction.atomic():
        seat = _seat_lock(seat_id)
        # Read after the locks: a cancel that waited behind a payment crossing the free
        # cancellation deadline is priced at the moment it happens.
        now = timezone.now()
        room = seat.room
        if seat.client_id != actor.pk:
            raise RoomsError("Only the client who booked this seat can cancel it.")
        if seat.state not in (SeatState.RESERVED, SeatState.CONFIRMED):
            raise InvalidTransition(f"This booking is already {seat.get_state_display().lower()}.")
        if room.state not in (RoomState.SCHEDULED, RoomState.OPEN) or room.starts_at <= now:
            raise InvalidTransition("The session has started; it can no longer be canceled.")
        before = room.starts_at - now
        fee = selectors.seat_cancellation_fee(seat, now)
        if expected_fee_minor is not None and fee != expected_fee_minor:
            raise InvalidTransition(
                f"The cancellation fee is now {format_money(fee, room.currency)}: the free "
                "cancellation period ended while the page was open. Review and confirm again."
            )
        was_confirmed = seat.state == SeatState.CONFIRMED
        seat_transition(
            seat,
            SeatState.CANCELED,
            canceled_at=now,
            cancel_reason="client_canceled",
            cancel_fee_minor=fee,
        )
        room_event_write(
            room,
            "seat_canceled",
            actor,
            seat=seat.pk,
            fee_minor=fee,
            rule=f"free until {settings.FREE_CANCELLATION_HOURS} h before, "
            f"then {room.late_cancel_fee_percent}% of {room.max_amount_minor}",
            hours_before=_hours_floor(before),
        )
        if room.kind == RoomKind.PRIVATE:
            room_transition(room, RoomState.CANCELED, actor, reason="client_canceled")
        _seat_money_on_cancel(seat, room, fee, actor, before)
        if was_confirmed:
            emails.booking_canceled(seat, by="client")
    return seat


def _seat_lock(seat_id: int) -> Seat:
    """Lock a seat with its payment and room for the rest of the transaction. Locks are taken
    payment, room, then seats, everywhere: no two writers wait in a circle."""
    room_id, payment_id = Seat.objects.values_list("room_id", "payment_id").get(pk=seat_id)
    billing.payments_lock([payment_id])
    room = Room.objects.select_for_update().get(pk=room_id)
    seat = Seat.objects.select_for_update().get(pk=seat_id)
    seat.room = room
    return seat


def _hours_floor(before: timedelta) -> float:
    """Hours to two places, rounded down (in whole units of 36 s, not on a float): a
    cancellation a moment inside the fee period must not read as "24.0 h before" next to a fee
    that applies from 24 h."""
    return (before // timedelta(seconds=36)) / 100


def _time_before_start(before: timedelta) -> str:
    """ "23 h 59 min", rounded down to the minute for the same reason."""
    minutes = before // timedelta(minutes=1)
    return f"{minutes // 60} h {minutes % 60} min"


def _seat_money_on_cancel(
    seat: Seat, room: Room, fee: int, actor: User | None, before: timedelta
) -> None:
    """The cancellation's money, in its transaction: the late fee captured, or a release."""
    if seat.payment is None:
        return
    if fee == 0 or seat.payment.state != PaymentState.AUTHORIZED:
        # Nothing to charge, or no hold left to charge it from (a hold the provider let
        # lapse): the cancellation still goes through and releases whatever remains.
        billing.payment_release(seat.payment, reason=seat.cancel_reason, actor=actor)
        return
    billing.payment_settle(
        seat.payment,
        amount_minor=fee,
        currency=room.currency,
        rule="late_cancel",
        inputs={
            "hours_before_start": _hours_floor(before),
            "free_hours": settings.FREE_CANCELLATION_HOURS,
            "late_cancel_fee_percent": room.late_cancel_fee_percent,
            "max_amount_minor": room.max_amount_minor,
        },
        explanation=f"Canceled {_time_before_start(before)} before the start (free until "
        f"{settings.FREE_CANCELLATION_HOURS} h): {room.late_cancel_fee_percent}% of "
        f"{format_money(room.max_amount_minor, room.currency)} = "
        f"{format_money(fee, room.currency)}.",
        actor=actor,
    )


def room_cancel_by_expert(room_id: int, *, actor: User) -> Room:
    """The expert cancels: every client is released in full and told, with a way to rebook."""
    if not Room.objects.filter(pk=room_id, expert=actor).exists():
        raise RoomsError("Only the expert of this session can cancel it.")
    return _room_cancel(room_id, actor=actor)


def room_cancel_by_staff(room_id: int, *, actor: User) -> Room:
    """Staff end a session nobody has met in yet (booked, or a lobby waiting): it is canceled,
    every client released in full and told, rather than closed (which would price the
    clients who had not come yet as no-shows)."""
    return _room_cancel(
        room_id, actor=actor, started_ok=True, reason="canceled_by_staff", by="parley"
    )


# Sessions not live yet: booked, or with the lobby open (even past the start while nobody
# has met). A ban or a block cancels these with nothing charged; closing one instead would
# price the client who can no longer join as a no-show.
NOT_LIVE_YET = (RoomState.SCHEDULED, RoomState.OPEN)


def bookings_cancel_for_suspension(user: User, *, actor: User) -> list[int]:
    """A suspended account meets nobody any more: the sessions it hosts that are not live yet
    are canceled as if its expert had (every client released in full and told), and its seats
    in sessions not live yet are canceled with nothing charged. Inside the caller's
    transaction; returns the rooms touched."""
    touched = []
    for room_id in Room.objects.filter(state__in=NOT_LIVE_YET, expert=user).values_list(
        "pk", flat=True
    ):
        _room_cancel(room_id, actor=actor, started_ok=True, reason="account_suspended", by="parley")
        touched.append(room_id)
    seats = Seat.objects.filter(client=user, state__in=HOLDING_STATES, room__state__in=NOT_LIVE_YET)
    for seat_id, room_id in seats.values_list("pk", "room_id"):
        _seat_cancel_free(seat_id, actor=actor, reason="account_suspended", by="parley")
        touched.append(room_id)
    return touched


def bookings_cancel_for_block(expert_id: int, client_id: int, *, actor: User) -> list[int]:
    """A block between an expert and a client: their sessions together that are not live yet
    are canceled with nothing charged — a private one as if the expert canceled, the client's
    seat in a group one. Nobody is told of the block. Returns the rooms touched."""
    touched = []
    seats = Seat.objects.filter(
        client_id=client_id,
        state__in=HOLDING_STATES,
        room__expert_id=expert_id,
        room__state__in=NOT_LIVE_YET,
    ).select_related("room")
    for seat in seats:
        if seat.room.kind == RoomKind.PRIVATE:
            try:
                _room_cancel(seat.room_id, actor=actor, started_ok=True)
            except InvalidTransition:
                continue  # went live a moment ago: the caller separates the pair there
        else:
            _seat_cancel_free(seat.pk, actor=actor, reason="expert_canceled", by="expert")
        touched.append(seat.room_id)
    return touched


def _seat_cancel_free(seat_id: int, *, actor: User, reason: str, by: CanceledBy) -> None:
    with transaction.atomic():
        seat = _seat_lock(seat_id)
        room = seat.room
        if seat.state not in HOLDING_STATES:
            return  # canceled a moment ago by its client
        was_confirmed = seat.state == SeatState.CONFIRMED
        seat_transition(
            seat, SeatState.CANCELED, canceled_at=timezone.now(), cancel_reason=reason,
            cancel_fee_minor=0,
        )  # fmt: skip
        room_event_write(room, "seat_canceled", actor, seat=seat.pk, fee_minor=0, rule=reason)
        now = timezone.now()
        if room.kind == RoomKind.PRIVATE:
            room_transition(room, RoomState.CANCELED, actor, reason=reason)
            _lobby_empty(room, now)
        else:
            _lobby_empty(room, now, seat.client_id)
        _seat_money_on_cancel(seat, room, 0, actor, timedelta(0))
        if was_confirmed:
            emails.booking_canceled(seat, by=by)


def _lobby_empty(room: Room, now: datetime, user_id: int | None = None) -> None:
    """Anyone waiting in the lobby of a room that will not happen (or only `user_id`, whose
    seat is canceled) is told, and their socket closes (on whichever process holds it, after
    commit)."""
    waiting = Presence.objects.filter(room=room, closed_at__isnull=True)
    if user_id is not None:
        waiting = waiting.filter(user_id=user_id)
    for user_id in list(waiting.values_list("user_id", flat=True)):
        notice = "This session was canceled; nothing is charged."
        message = {"type": "presence.removed", "reason": "canceled", "notice": notice}
        broadcast.participant_send(room.pk, user_id, message)
    waiting.update(closed_at=now, close_reason="room_closed")


def _room_cancel(
    room_id: int,
    *,
    actor: User,
    started_ok: bool = False,
    reason: str = "expert_canceled",
    by: CanceledBy = "expert",
) -> Room:
    """Cancel a room and release every client in full. `started_ok`: a lobby still waiting
    past the start (nobody has met) may be canceled too (a ban, a block, staff)."""
    now = timezone.now()
    with transaction.atomic():
        billing.payments_lock(
            list(
                Seat.objects.filter(room_id=room_id, state__in=HOLDING_STATES).values_list(
                    "payment_id", flat=True
                )
            )
        )
        room = Room.objects.select_for_update().get(pk=room_id)
        started = room.starts_at <= now and not started_ok
        if room.state not in NOT_LIVE_YET or started:
            raise InvalidTransition("This session has started or ended; it cannot be canceled.")
        room_transition(room, RoomState.CANCELED, actor, reason=reason)
        _lobby_empty(room, now)
        seats = list(Seat.objects.select_for_update().filter(room=room, state__in=HOLDING_STATES))
        for seat in seats:
            was_confirmed = seat.state == SeatState.CONFIRMED
            seat_transition(
                seat,
                SeatState.CANCELED,
                canceled_at=now,
                cancel_reason=reason,
                cancel_fee_minor=0,
            )
            room_event_write(room, "seat_canceled", actor, seat=seat.pk, fee_minor=0, rule=reason)
            _seat_money_on_cancel(seat, room, 0, actor, timedelta(0))
            if was_confirmed:
                emails.booking_canceled(seat, by=by)
    return room


def seat_reschedule(seat_id: int, *, actor: User, new_start: datetime) -> Room:
    """Move a private booking to another free slot of the same offering; the payment stays."""
    now = timezone.now()
    seat = Seat.objects.select_related("room", "room__offering").get(pk=seat_id)
    room = seat.room
    if seat.client_id != actor.pk:
        raise RoomsError("Only the client who booked this seat can move it.")
    if seat.state != SeatState.CONFIRMED:
        raise InvalidTransition("Only a confirmed booking can be moved.")
    if room.kind != RoomKind.PRIVATE or room.offering is None:
        raise InvalidTransition("Group sessions cannot be moved; cancel your seat instead.")
    if room.starts_at - now < timedelta(hours=settings.FREE_CANCELLATION_HOURS):
        raise InvalidTransition(
            f"Within {settings.FREE_CANCELLATION_HOURS} h of the start a booking can be canceled "
            "(with the late fee) but not moved."
        )
    valid_until = billing_selectors.hold_valid_until(seat.payment) if seat.payment else None
    if valid_until is not None and new_start + (room.ends_at - room.starts_at) > valid_until:
        raise InvalidTransition(
            "Your card hold cannot stretch that far ahead. Pick a time before "
            f"{timezone.localtime(valid_until, ZoneInfo(actor.time_zone)):%A %d %B %H:%M}, "
            f"or cancel (free until {settings.FREE_CANCELLATION_HOURS} h before) and book the "
            "new time."
        )
    offering = room.offering
    # The new start must be one the offering offers now; the session keeps the length and
    # buffers it was booked with (an edited offering never changes a booked client's terms).
    slot_check_policy(offering, new_start, now)
    slot = Slot(new_start, new_start + (room.ends_at - room.starts_at))
    blocked_from, blocked_until = slot.blocked_range(
        room.starts_at - room.blocked_from, room.blocked_until - room.ends_at
    )
    try:
        with transaction.atomic():
            expert_calendar_lock(offering.expert, blocked_from, blocked_until)
            locked = Room.objects.select_for_update().get(pk=room.pk)
            if locked.state != RoomState.SCHEDULED:
                raise InvalidTransition("This session can no longer be moved.")
            rooms_release_stale(offering.expert, blocked_from, blocked_until, now)
            clash = selectors.rooms_blocking(offering.expert, blocked_from, blocked_until)
            if clash.exclude(pk=room.pk).exists():
                raise SlotTaken()
            old_start = locked.starts_at
            locked.starts_at, locked.ends_at = slot.starts_at, slot.ends_at
            locked.blocked_from, locked.blocked_until = blocked_from, blocked_until
            locked.sequence += 1
            locked.save(
                update_fields=[
                    "starts_at",
                    "ends_at",
                    "blocked_from",
                    "blocked_until",
                    "sequence",
                ]
            )
            room_event_write(
                locked,
                "rescheduled",
                actor,
                seat=seat.pk,
                old_starts_at=old_start.isoformat(),
                new_starts_at=slot.starts_at.isoformat(),
            )
            emails.booking_rescheduled(seat, locked)
            room_timers_schedule(locked)
    except SlotTaken:
        raise SlotTaken(slot_alternatives(offering, new_start)) from None
    except IntegrityError as error:
        if NO_OVERLAP_CONSTRAINT not in str(error):
            raise
        raise SlotTaken(slot_alternatives(offering, new_start)) from None
    return locked


def reminders_queue(now: datetime | None = None) -> int:
    """Queue the 24 h and 15 min reminders that are due (beat, every minute; idempotent)."""
    now = now or timezone.now()
    queued = 0
    leads = sorted(emails.REMINDERS.items(), key=lambda item: item[1])
    for index, (label, lead) in enumerate(leads):
        # A reminder is due until the next, shorter one takes over: after a worker outage the
        # day-before reminder is not sent ten minutes before the start.
        shorter = leads[index - 1][1] if index else timedelta(0)
        due = Seat.objects.filter(
            state=SeatState.CONFIRMED,
            room__state__in=(RoomState.SCHEDULED, RoomState.OPEN),
            room__starts_at__gt=now + shorter,
            room__starts_at__lte=now + lead,
            # A booking made inside the reminder's lead time already got its confirmation.
            confirmed_at__lt=F("room__starts_at") - lead,
        ).select_related("room", "room__expert", "client")
        for seat in due:
            queued += emails.booking_reminder(seat, label)
    return queued
