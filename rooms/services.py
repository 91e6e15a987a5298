"""Every state change of offerings, availability, rooms and seats.

Room and seat states change only here, each through a guarded transition (a row lock or a
conditional UPDATE) that also writes a RoomEvent. Emails are written to the outbox inside the
same transaction and sent after commit.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from allauth.account.models import EmailAddress
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from accounts.models import User
from accounts.selectors import users_blocked_between
from billing import selectors as billing_selectors
from billing import services as billing
from billing.models import Payment, PaymentState
from billing.pricing import format_money
from rooms import emails, selectors
from rooms.availability import Slot, candidate_slots
from rooms.errors import BookingRefused, InvalidTransition, RoomsError, SlotTaken
from rooms.models import (
    HOLDING_STATES,
    ROOM_TRANSITIONS,
    SEAT_TRANSITIONS,
    AvailabilityOverride,
    AvailabilityRule,
    Offering,
    OverrideKind,
    Room,
    RoomEvent,
    RoomKind,
    RoomState,
    Seat,
    SeatState,
)

NO_OVERLAP_CONSTRAINT = "room_expert_no_overlap"


# --- Offerings and availability ------------------------------------------------------------


def offering_save(expert: User, offering: Offering | None, fields: dict[str, Any]) -> Offering:
    """Create or edit an offering. Booked rooms keep the terms they were sold on."""
    if not selectors.expert_is_approved(expert):
        raise RoomsError("Only approved experts can sell sessions.")
    if offering is None:
        offering = Offering(expert=expert)
    elif offering.expert_id != expert.pk:
        raise RoomsError("This offering belongs to another expert.")
    for name, value in fields.items():
        setattr(offering, name, value)
    offering.full_clean()
    offering.save()
    return offering


def availability_replace_weekly(
    expert: User, intervals: list[tuple[int, time, time]]
) -> list[AvailabilityRule]:
    """Replace the expert's weekly rules in one go (the weekly editor saves the whole week)."""
    for _weekday, start, end in intervals:
        if not start < end:
            raise RoomsError(f"An interval must end after it starts ({start:%H:%M}–{end:%H:%M}).")
    ordered = sorted(intervals)
    for (day_a, _start_a, end_a), (day_b, start_b, _end_b) in zip(
        ordered, ordered[1:], strict=False
    ):
        if day_a == day_b and start_b < end_a:
            raise RoomsError("Two intervals on the same day overlap; merge them into one.")
    with transaction.atomic():
        AvailabilityRule.objects.filter(expert=expert).delete()
        return AvailabilityRule.objects.bulk_create(
            AvailabilityRule(expert=expert, weekday=weekday, start_time=start, end_time=end)
            for weekday, start, end in ordered
        )


def availability_override_add(
    expert: User, *, day: Any, kind: str, start: time | None, end: time | None
) -> AvailabilityOverride:
    override = AvailabilityOverride(expert=expert, date=day, kind=kind)
    if kind == OverrideKind.EXTRA:
        override.start_time, override.end_time = start, end
    override.full_clean()
    override.save()
    return override


def availability_override_delete(expert: User, override_id: int) -> None:
    AvailabilityOverride.objects.filter(pk=override_id, expert=expert).delete()


# --- Booking -------------------------------------------------------------------------------


def booking_reserve(client: User, offering: Offering, slot_start: datetime) -> Seat:
    """Reserve a private slot: a scheduled room and a seat held for payment for a few minutes.

    Checks come first and say exactly what is wrong; the database has the last word on
    overlap (exclusion constraint), so two clients racing for one slot get one room.
    """
    _booking_check_people(client, offering.expert)
    _booking_check_offering(offering, group=False)
    now = timezone.now()
    slot = _slot_check_policy(offering, slot_start, now)
    try:
        with transaction.atomic():
            room = _room_create(offering, slot, RoomKind.PRIVATE, now)
            seat = Seat.objects.create(
                room=room,
                client=client,
                reserved_until=_hold_until(now),
                payment=_payment_open(room, client, now),
            )
            _event(room, "booked", client, seat=seat.pk, starts_at=slot.starts_at.isoformat())
    except SlotTaken:
        raise SlotTaken(_alternatives(offering, slot_start)) from None
    return seat


def group_room_publish(expert: User, offering: Offering, starts_at: datetime) -> Room:
    """The expert opens a group session at a time of their choosing; clients then take seats."""
    if offering.expert_id != expert.pk:
        raise RoomsError("This offering belongs to another expert.")
    if not selectors.expert_is_approved(expert):
        raise RoomsError("Only approved experts can sell sessions.")
    _booking_check_offering(offering, group=True)
    now = timezone.now()
    # Arithmetic on an aware local datetime is wall-clock arithmetic (wrong across DST).
    starts_at = starts_at.astimezone(UTC)
    if starts_at <= now:
        raise BookingRefused("That time has already passed. Pick a time in the future.")
    if starts_at > now + timedelta(days=offering.horizon_days):
        raise BookingRefused(
            f"Sessions can be published at most {offering.horizon_days} days ahead."
        )
    try:
        with transaction.atomic():
            room = _room_create(
                offering, Slot(starts_at, starts_at + offering.length), RoomKind.GROUP, now
            )
            _event(room, "published", expert, capacity=room.capacity)
    except SlotTaken:
        raise BookingRefused(
            "You already have a session at that time (buffers included). Pick another time."
        ) from None
    return room


def _room_create(offering: Offering, slot: Slot, kind: str, now: datetime) -> Room:
    """A scheduled room for `slot`, or SlotTaken when the expert's calendar has no room for
    it (buffers included). Runs inside the caller's transaction."""
    expert = offering.expert
    policy = selectors.offering_policy(offering)
    blocked_from, blocked_until = slot.blocked_range(policy.buffer_before, policy.buffer_after)
    _expert_calendar_lock(expert)
    _rooms_release_stale(expert, blocked_from, blocked_until, now)
    if selectors.rooms_blocking(expert, blocked_from, blocked_until).exists():
        raise SlotTaken()
    try:
        with transaction.atomic():
            return Room.objects.create(
                expert=expert,
                offering=offering,
                kind=kind,
                title=offering.title,
                starts_at=slot.starts_at,
                ends_at=slot.ends_at,
                blocked_from=blocked_from,
                blocked_until=blocked_until,
                capacity=1 if kind == RoomKind.PRIVATE else offering.capacity,
                **_terms(offering),
            )
    except IntegrityError as error:
        if NO_OVERLAP_CONSTRAINT not in str(error):
            raise
        raise SlotTaken() from None


def group_seat_reserve(client: User, room_id: int) -> Seat:
    """Take a seat in a published group session, if one is left."""
    now = timezone.now()
    with transaction.atomic():
        # Payments first (the lock order): the client's own stale reservation here may be
        # released below.
        billing.payments_lock(
            list(
                Seat.objects.filter(
                    room_id=room_id, client=client, state=SeatState.RESERVED
                ).values_list("payment_id", flat=True)
            )
        )
        # The row lock serialises seat-takers of this room: count and insert cannot interleave.
        room = (
            Room.objects.select_for_update(of=("self",))
            .select_related("offering", "expert")
            .get(pk=room_id)
        )
        _booking_check_people(client, room.expert)
        if room.kind != RoomKind.GROUP:
            raise BookingRefused("This session is private; book a time from the expert's page.")
        if room.state != RoomState.SCHEDULED or room.starts_at <= now:
            raise BookingRefused("This session is no longer open for booking.")
        notice = timedelta(minutes=room.offering.notice_minutes if room.offering else 0)
        if room.starts_at < now + notice:
            raise BookingRefused("This session starts too soon to book a seat.")
        _seats_expire_stale(Seat.objects.filter(room=room, client=client), now)
        if Seat.objects.holding_place().filter(room=room, client=client).exists():
            raise BookingRefused("You already have a seat in this session.")
        if selectors.seats_holding(room) >= room.capacity:
            raise BookingRefused("This session is full.")
        seat = Seat.objects.create(
            room=room,
            client=client,
            reserved_until=_hold_until(now),
            payment=_payment_open(room, client, now),
        )
        _event(room, "seat_reserved", client, seat=seat.pk)
    return seat


def _payment_open(room: Room, client: User, now: datetime) -> Payment:
    """The payment a new seat waits for: a hold of the seat's maximum, placed now, or for a
    session further out than a card hold lasts, a saved card and a hold placed later."""
    hold_at = None
    if room.starts_at - now > timedelta(days=settings.HOLD_LATER_AFTER_DAYS):
        hold_at = room.starts_at - timedelta(hours=settings.HOLD_BEFORE_HOURS)
    return billing.payment_open(
        payer=client,
        payee=room.expert,
        amount_minor=room.max_amount_minor,
        currency=room.currency,
        description=f"{room.title} with {room.expert.display_name}, "
        f"{room.starts_at:%Y-%m-%d %H:%M} UTC",
        hold_at=hold_at,
    )


def seat_payment_authorized(payment: Payment) -> None:
    """billing: the seat's hold is authorized. Confirm the seat, or if it can no longer be
    confirmed (the reservation expired or was canceled meanwhile), give the hold back."""
    seat = Seat.objects.filter(payment=payment).first()
    if seat is None:
        return
    try:
        seat_confirm(seat.pk)
    except BookingRefused as error:
        billing.payment_release(payment, reason=f"the seat could not be confirmed: {error}")


def seat_payment_card_saved(payment: Payment) -> None:
    """billing: the card is saved and the hold will be placed later. The seat stays reserved
    until a little before the start; if the hold is still missing then, it is released."""
    seat = Seat.objects.select_related("room").filter(payment=payment).first()
    if seat is None:
        return
    with transaction.atomic():
        release_at = seat.room.starts_at - timedelta(hours=settings.UNPAID_RELEASE_BEFORE_HOURS)
        changed = Seat.objects.filter(
            pk=seat.pk, state=SeatState.RESERVED, reserved_until__gt=timezone.now()
        ).update(reserved_until=release_at)
        if changed:
            _event(seat.room, "card_saved", seat.client, seat=seat.pk, hold_at=str(payment.hold_at))
        else:
            billing.payment_release(payment, reason="the reservation had already ended")


def seat_confirm(seat_id: int, *, actor: User | None = None) -> Seat:
    """The hold is authorized for a reservation: the seat is the client's. Safe to call twice.

    Called by billing's `payment_authorized` signal (see `seat_payment_authorized`).
    """
    now = timezone.now()
    with transaction.atomic():
        seat = Seat.objects.select_for_update(of=("self",)).select_related("room").get(pk=seat_id)
        if seat.state == SeatState.CONFIRMED:
            return seat
        if seat.state == SeatState.CANCELED:
            raise BookingRefused("This booking was canceled; it cannot be confirmed.")
        if seat.state != SeatState.RESERVED or seat.reserved_until <= now:
            raise BookingRefused(
                "This reservation expired before it was confirmed, and the time was released. "
                "Book again to get a new slot."
            )
        _seat_transition(seat, SeatState.CONFIRMED, confirmed_at=now)
        _event(seat.room, "seat_confirmed", actor or seat.client, seat=seat.pk)
        emails.booking_confirmed(seat)
    return seat


def reservations_expire(now: datetime | None = None) -> int:
    """Mark reservations past their time expired and free their private rooms (beat sweep)."""
    now = now or timezone.now()
    stale = Seat.objects.filter(state=SeatState.RESERVED, reserved_until__lte=now)
    expired = 0
    for seat_id in stale.values_list("pk", flat=True)[:1000]:
        with transaction.atomic():
            expired += _seats_expire_stale(Seat.objects.filter(pk=seat_id), now)
    return expired


def seat_cancel(seat_id: int, *, actor: User, expected_fee_minor: int | None = None) -> Seat:
    """The client cancels their seat. The policy decides the fee; a private room is freed.

    `expected_fee_minor` is the fee the client was shown; if the clock crossed the free
    cancellation deadline since, the client is asked again instead of charged by surprise.
    """
    now = timezone.now()
    with transaction.atomic():
        # Locks are taken payment, room, then seats, everywhere: no two writers wait in a circle.
        room_id, payment_id = Seat.objects.values_list("room_id", "payment_id").get(pk=seat_id)
        billing.payments_lock([payment_id])
        room = Room.objects.select_for_update().get(pk=room_id)
        seat = Seat.objects.select_for_update().get(pk=seat_id)
        seat.room = room
        if seat.client_id != actor.pk:
            raise RoomsError("Only the client who booked this seat can cancel it.")
        if seat.state not in (SeatState.RESERVED, SeatState.CONFIRMED):
            raise InvalidTransition(f"This booking is already {seat.get_state_display().lower()}.")
        if room.state not in (RoomState.SCHEDULED, RoomState.OPEN) or room.starts_at <= now:
            raise InvalidTransition("The session has started; it can no longer be canceled.")
        hours_before = (room.starts_at - now).total_seconds() / 3600
        fee = selectors.seat_cancellation_fee(seat, now)
        if expected_fee_minor is not None and fee != expected_fee_minor:
            raise InvalidTransition(
                f"The cancellation fee is now {format_money(fee, room.currency)}: the free "
                "cancellation period ended while the page was open. Review and confirm again."
            )
        was_confirmed = seat.state == SeatState.CONFIRMED
        _seat_transition(
            seat,
            SeatState.CANCELED,
            canceled_at=now,
            cancel_reason="client_canceled",
            cancel_fee_minor=fee,
        )
        _event(
            room,
            "seat_canceled",
            actor,
            seat=seat.pk,
            fee_minor=fee,
            rule=f"free until {settings.FREE_CANCELLATION_HOURS} h before, "
            f"then {room.late_cancel_fee_percent}% of {room.max_amount_minor}",
            hours_before=round(hours_before, 2),
        )
        if room.kind == RoomKind.PRIVATE:
            _room_transition(room, RoomState.CANCELED, actor, reason="client_canceled")
        _seat_money_on_cancel(seat, room, fee, actor, hours_before)
        if was_confirmed:
            emails.booking_canceled(seat, by_expert=False)
    return seat


def _seat_money_on_cancel(
    seat: Seat, room: Room, fee: int, actor: User | None, hours_before: float
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
            "hours_before_start": round(hours_before, 2),
            "free_hours": settings.FREE_CANCELLATION_HOURS,
            "late_cancel_fee_percent": room.late_cancel_fee_percent,
            "max_amount_minor": room.max_amount_minor,
        },
        explanation=f"Canceled {hours_before:.1f} h before the start (free until "
        f"{settings.FREE_CANCELLATION_HOURS} h): {room.late_cancel_fee_percent}% of "
        f"{format_money(room.max_amount_minor, room.currency)} = "
        f"{format_money(fee, room.currency)}.",
        actor=actor,
    )


def room_cancel_by_expert(room_id: int, *, actor: User) -> Room:
    """The expert cancels: every client is released in full and told, with a way to rebook."""
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
        if room.expert_id != actor.pk:
            raise RoomsError("Only the expert of this session can cancel it.")
        if room.state not in (RoomState.SCHEDULED, RoomState.OPEN) or room.starts_at <= now:
            raise InvalidTransition("This session has started or ended; it cannot be canceled.")
        _room_transition(room, RoomState.CANCELED, actor, reason="expert_canceled")
        seats = list(Seat.objects.select_for_update().filter(room=room, state__in=HOLDING_STATES))
        for seat in seats:
            was_confirmed = seat.state == SeatState.CONFIRMED
            _seat_transition(
                seat,
                SeatState.CANCELED,
                canceled_at=now,
                cancel_reason="expert_canceled",
                cancel_fee_minor=0,
            )
            _event(room, "seat_canceled", actor, seat=seat.pk, fee_minor=0, rule="expert canceled")
            _seat_money_on_cancel(seat, room, 0, actor, 0)
            if was_confirmed:
                emails.booking_canceled(seat, by_expert=True)
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
    _slot_check_policy(offering, new_start, now)
    slot = Slot(new_start, new_start + (room.ends_at - room.starts_at))
    blocked_from, blocked_until = slot.blocked_range(
        room.starts_at - room.blocked_from, room.blocked_until - room.ends_at
    )
    try:
        with transaction.atomic():
            _expert_calendar_lock(offering.expert)
            locked = Room.objects.select_for_update().get(pk=room.pk)
            if locked.state != RoomState.SCHEDULED:
                raise InvalidTransition("This session can no longer be moved.")
            _rooms_release_stale(offering.expert, blocked_from, blocked_until, now)
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
            _event(
                locked,
                "rescheduled",
                actor,
                seat=seat.pk,
                old_starts_at=old_start.isoformat(),
                new_starts_at=slot.starts_at.isoformat(),
            )
            emails.booking_rescheduled(seat, locked)
    except SlotTaken:
        raise SlotTaken(_alternatives(offering, new_start)) from None
    except IntegrityError as error:
        if NO_OVERLAP_CONSTRAINT not in str(error):
            raise
        raise SlotTaken(_alternatives(offering, new_start)) from None
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


# --- Internals -----------------------------------------------------------------------------


def _terms(offering: Offering) -> dict[str, Any]:
    return {
        "pricing": offering.pricing,
        "price_minor": offering.price_minor,
        "currency": offering.currency,
        "late_cancel_fee_percent": offering.late_cancel_fee_percent,
        "no_show_fee_percent": offering.no_show_fee_percent,
    }


def _hold_until(now: datetime) -> datetime:
    return now + timedelta(minutes=settings.RESERVATION_HOLD_MINUTES)


def _booking_check_people(client: User, expert: User) -> None:
    if client.pk == expert.pk:
        raise BookingRefused("You cannot book your own session.")
    if not EmailAddress.objects.filter(user=client, verified=True).exists():
        raise BookingRefused("Verify your email address before booking; check your inbox.")
    if not selectors.expert_is_approved(expert):
        raise BookingRefused("This expert is not taking bookings.")
    if users_blocked_between(client.pk, expert.pk):
        raise BookingRefused("You cannot book this expert.")


def _booking_check_offering(offering: Offering, *, group: bool) -> None:
    if not offering.is_active:
        raise BookingRefused("This offering is not available for booking any more.")
    if group and offering.capacity < 2:
        raise BookingRefused("This offering is private; clients book it from your free times.")
    if not group and offering.capacity > 1:
        raise BookingRefused("This is a group offering: take a seat in one of its sessions.")


def _slot_check_policy(offering: Offering, slot_start: datetime, now: datetime) -> Slot:
    """The slot starting at `slot_start`, or a refusal that says which rule it breaks."""
    if timezone.is_naive(slot_start):
        raise BookingRefused("The time must include its time zone.")
    policy = selectors.offering_policy(offering)
    if slot_start <= now:
        raise BookingRefused("That time has already passed. Pick a time in the future.")
    if slot_start < now + policy.notice:
        raise BookingRefused(
            f"This session needs at least {_duration(policy.notice)} notice. Pick a later time."
        )
    if slot_start > now + policy.horizon:
        raise BookingRefused(
            f"This session can be booked at most {offering.horizon_days} days ahead."
        )
    zone = selectors.expert_zone(offering.expert)
    local_day = slot_start.astimezone(zone).date()
    offered = candidate_slots(
        zone=zone,
        first_day=local_day - timedelta(days=1),
        last_day=local_day + timedelta(days=1),
        weekly=selectors.weekly_intervals(offering.expert),
        overrides=selectors.date_overrides(
            offering.expert, local_day - timedelta(days=1), local_day + timedelta(days=1)
        ),
        length=policy.length,
    )
    slot = next((slot for slot in offered if slot.starts_at == slot_start), None)
    if slot is None:
        raise BookingRefused(
            "That time is outside the expert's availability. Pick one of the listed times."
        )
    return slot


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes % 60 == 0:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}'"
    return f"{minutes} minutes'"


def _alternatives(offering: Offering, around: datetime) -> list[datetime]:
    return [slot.starts_at for slot in selectors.nearest_free_slots(offering, around)]


def _expert_calendar_lock(expert: User) -> None:
    """Serialise changes to one expert's calendar for the rest of the transaction.

    The exclusion constraint alone is correct but, with many inserts of one range in flight,
    PostgreSQL can resolve their waits with a deadlock error instead of a constraint error.
    Queuing on the expert's row first lets the overlap check decide every race cleanly; the
    constraint stays as the backstop (and is all SQLite needs: it serialises writers anyway).
    """
    list(User.objects.select_for_update().filter(pk=expert.pk).values_list("pk", flat=True))


def _rooms_release_stale(expert: User, start: datetime, end: datetime, now: datetime) -> None:
    """Expire reservations past their time on private rooms in [start, end), freeing them."""
    stale = Seat.objects.filter(
        room__expert=expert,
        room__kind=RoomKind.PRIVATE,
        room__state=RoomState.SCHEDULED,
        room__blocked_from__lt=end,
        room__blocked_until__gt=start,
    )
    _seats_expire_stale(stale, now)


def _seats_expire_stale(seats: QuerySet[Seat], now: datetime) -> int:
    """Expire the given seats that are reservations past their time; cancel their private
    rooms. Conditional UPDATEs: a sweep and a booking doing this at once expire each seat once."""
    expired = 0
    for seat in seats.filter(state=SeatState.RESERVED, reserved_until__lte=now).select_related(
        "room", "payment"
    ):
        # Payment, room, then seat: the lock order every writer follows.
        billing.payments_lock([seat.payment_id] if seat.payment_id else [])
        seat.room = Room.objects.select_for_update().get(pk=seat.room_id)
        changed = Seat.objects.filter(
            pk=seat.pk, state=SeatState.RESERVED, reserved_until__lte=now
        ).update(state=SeatState.EXPIRED)
        if not changed:
            continue
        expired += 1
        _event(seat.room, "reservation_expired", None, seat=seat.pk)
        if seat.payment is not None:
            billing.payment_release(seat.payment, reason="the reservation expired unpaid")
        room = seat.room
        if room.kind == RoomKind.PRIVATE and room.state == RoomState.SCHEDULED:
            if not Seat.objects.holding_place().filter(room=room).exists():
                _room_transition(room, RoomState.CANCELED, None, reason="reservation_expired")
    return expired


def _room_transition(room: Room, target: str, actor: User | None, *, reason: str = "") -> None:
    sources = [state for state, targets in ROOM_TRANSITIONS.items() if target in targets]
    changed = Room.objects.filter(pk=room.pk, state__in=sources).update(
        state=target, cancel_reason=reason if target == RoomState.CANCELED else room.cancel_reason
    )
    if changed != 1:
        current = Room.objects.values_list("state", flat=True).get(pk=room.pk)
        if current == target:
            return
        raise InvalidTransition(
            f"This session is {RoomState(current).label.lower()}; "
            f"it cannot become {RoomState(target).label.lower()}."
        )
    old = room.state
    room.state = target
    if target == RoomState.CANCELED:
        room.cancel_reason = reason
    _event(room, "state_changed", actor, old=old, new=target, reason=reason)


def _seat_transition(seat: Seat, target: str, **fields: Any) -> None:
    sources = [state for state, targets in SEAT_TRANSITIONS.items() if target in targets]
    changed = Seat.objects.filter(pk=seat.pk, state__in=sources).update(state=target, **fields)
    if changed != 1:
        current = Seat.objects.values_list("state", flat=True).get(pk=seat.pk)
        raise InvalidTransition(f"This booking is already {SeatState(current).label.lower()}.")
    seat.state = target
    for name, value in fields.items():
        setattr(seat, name, value)


def _event(room: Room, kind: str, actor: User | None, **data: Any) -> RoomEvent:
    return RoomEvent.objects.create(room=room, kind=kind, actor=actor, data=data)
