"""Booking: reservations, group seats, confirmation by payment, and expiry.

Every write is guarded in the database (row locks in the documented order, the exclusion
constraint) and leaves a RoomEvent; emails go to the outbox inside the transaction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import User
from accounts.sql import columns, cursor_prepared, insert_select, load, saved
from billing import services as billing
from billing.models import Payment
from rooms import emails, selectors
from rooms.availability import Slot, slot_at
from rooms.errors import BookingRefused, InvalidTransition, RoomsError, SlotTaken
from rooms.models import (
    SEAT_TRANSITIONS,
    Offering,
    Room,
    RoomEvent,
    RoomKind,
    RoomState,
    Seat,
    SeatState,
)
from rooms.services.records import (
    expert_calendar_lock,
    room_event_new,
    room_event_write,
    room_transition,
    seat_transition,
)
from rooms.services.room_state import room_timers_schedule

NO_OVERLAP_CONSTRAINT = "room_expert_no_overlap"


def booking_reserve(client: User, offering: Offering, slot_start: datetime) -> Seat:
    """Reserve a private slot: a scheduled room and a seat held for payment for a few minutes.

    Checks come first and say exactly what is wrong; the database has the last word on
    overlap (exclusion constraint), so two clients racing for one slot get one room.
    """
    try:
        with transaction.atomic():
            # The people are read with the client's booking lock taken in the same round trip
            # (first in the transaction, as in every booking); the checks refuse before any
            # write, and the unpaid count comes after the lock.
            calendar = _booking_check_people(
                client, offering.expert, around=slot_start, lock_client=True
            )
            _booking_check_offering(offering, group=False)
            now = timezone.now()
            slot = slot_check_policy(offering, slot_start, now, calendar=calendar)
            _unpaid_limit_check(client, offering.expert, now, locked=True)
            room = _room_build(offering, slot, RoomKind.PRIVATE)
            # The payment needs no room id: opened before the calendar lock, it keeps the lock's
            # time to the overlap check and the rows that need the room.
            payment = _payment_open(room, client, now)
            seat = Seat(room=room, client=client, reserved_until=_hold_until(now), payment=payment)
            booked = room_event_new(room, "booked", client, starts_at=slot.starts_at.isoformat())
            _room_insert(room, now, seat=seat, seat_event=booked)
    except SlotTaken:
        raise SlotTaken(slot_alternatives(offering, slot_start)) from None
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
            room_event_write(room, "published", expert, capacity=room.capacity)
    except SlotTaken:
        raise BookingRefused(
            "You already have a session at that time (buffers included). Pick another time."
        ) from None
    return room


def _room_create(offering: Offering, slot: Slot, kind: str, now: datetime) -> Room:
    """A scheduled room for `slot`, or SlotTaken when the expert's calendar has no room for
    it (buffers included). Runs inside the caller's transaction."""
    room = _room_build(offering, slot, kind)
    _room_insert(room, now)
    return room


def _room_build(offering: Offering, slot: Slot, kind: str) -> Room:
    """The room `slot` would be, not saved yet, with the offering's terms of now."""
    policy = selectors.offering_policy(offering)
    blocked_from, blocked_until = slot.blocked_range(policy.buffer_before, policy.buffer_after)
    return Room(
        expert=offering.expert,
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


def _room_insert(
    room: Room, now: datetime, *, seat: Seat | None = None, seat_event: RoomEvent | None = None
) -> None:
    """Save the built `room`, with its first `seat` and that seat's `seat_event` if given
    (the event's data get the seat's id), or raise SlotTaken when the expert's calendar has no
    room for it (buffers included). Inside the caller's transaction, which SlotTaken must end."""
    expert, start, end = room.expert, room.blocked_from, room.blocked_until
    expert_calendar_lock(expert, start, end)
    # Most slots asked for overlap no room at all (what the no-overlap constraint sees): the
    # insert itself checks that and settles them. Only an overlap needs the finer look: a
    # stale reservation there is released (else the constraint would refuse the new room),
    # and a room that closed early may have freed the time.
    if not _rows_insert(room, seat, seat_event, only_if_free=True):
        rooms_release_stale(expert, start, end, now)
        if selectors.rooms_blocking(expert, start, end).exists():
            raise SlotTaken()
        _rows_insert(room, seat, seat_event, only_if_free=False)
    room_timers_schedule(room)


def _rows_insert(
    room: Room, seat: Seat | None, seat_event: RoomEvent | None, *, only_if_free: bool
) -> bool:
    """Insert the room, then its seat and the seat's event if given. `only_if_free`: insert
    nothing, and return False, when a room not canceled overlaps the room's blocked range.
    SlotTaken when the no-overlap constraint refuses the room."""
    try:
        # No savepoint (two round trips): a refused insert dooms the caller's transaction,
        # which SlotTaken then leaves, and Django refuses any query before that.
        with transaction.atomic(savepoint=False):
            if connection.vendor == "postgresql":
                return _rows_insert_statement(room, seat, seat_event, only_if_free=only_if_free)
            if only_if_free and _rooms_overlapping(room).exists():
                return False
            room.save(force_insert=True)
            if seat is not None:
                seat.room = room
                seat.save(force_insert=True)
                if seat_event is not None:
                    seat_event.data["seat"] = seat.pk
                    seat_event.save()
            return True
    except IntegrityError as error:
        if NO_OVERLAP_CONSTRAINT not in str(error):
            raise
        raise SlotTaken() from None


def _rooms_overlapping(room: Room) -> QuerySet[Room]:
    """The expert's rooms not canceled whose blocked range overlaps `room`'s."""
    return Room.objects.filter(
        expert=room.expert_id,
        blocked_from__lt=room.blocked_until,
        blocked_until__gt=room.blocked_from,
    ).exclude(state=RoomState.CANCELED)


def _rows_insert_statement(
    room: Room, seat: Seat | None, seat_event: RoomEvent | None, *, only_if_free: bool
) -> bool:
    """`_rows_insert` on PostgreSQL in one statement: the overlap read, the room, the seat and
    its event in one round trip, so the calendar's hour lock is held for that and the commit.
    (Through the ORM they were four round trips and most of a booking's Python time.)"""
    room_sql, params = insert_select(room)
    if only_if_free:
        # `_rooms_overlapping`; its snapshot is taken after the calendar lock was granted
        # (the lock was the previous statement), so it sees every room booked before.
        room_sql += (
            f" WHERE NOT EXISTS (SELECT 1 FROM {_quote(Room._meta.db_table)} r"  # noqa: S608 - names from the model; values are parameters
            " WHERE r.expert_id = %s AND r.blocked_from < %s AND r.blocked_until > %s"
            " AND r.state <> %s)"
        )
        params += [room.expert_id, room.blocked_until, room.blocked_from, RoomState.CANCELED]
    parts = [f"room AS ({room_sql} RETURNING id)"]
    result = "SELECT id, NULL FROM room"
    if seat is not None:
        seat_sql, seat_params = insert_select(
            seat, computed={"room_id": ("room.id", ())}, source="room"
        )
        parts.append(f"seat AS ({seat_sql} RETURNING id, room_id)")
        params += seat_params
        result = "SELECT room_id, id FROM seat"
        if seat_event is not None:
            data = RoomEvent._meta.get_field("data")
            event_sql, event_params = insert_select(
                seat_event,
                computed={
                    "room_id": ("seat.room_id", ()),
                    "data": (
                        "%s || jsonb_build_object('seat', seat.id)",
                        [data.get_db_prep_save(seat_event.data, connection)],
                    ),
                },
                source="seat",
            )
            parts.append(f"event AS ({event_sql})")
            params += event_params
    with cursor_prepared() as cursor:
        cursor.execute(f"WITH {', '.join(parts)} {result}", params)
        rows = cursor.fetchall()
    if not rows:
        return False
    [(room_id, seat_id)] = rows
    saved(room, room_id)
    if seat is not None:
        seat.room = room
        saved(seat, seat_id)
        if seat_event is not None:
            seat_event.data["seat"] = seat_id
    return True


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def group_seat_reserve(client: User, room_id: int) -> Seat:
    """Take a seat in a published group session, if one is left."""
    now = timezone.now()
    with transaction.atomic():
        # The client's booking lock first (it is taken before anything else by every
        # booking), then payments (the lock order): the client's own stale reservation here
        # may be released below.
        _client_booking_lock(client)
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
        _unpaid_limit_check(client, room.expert, now, locked=True)
        if selectors.seats_holding(room) >= room.capacity:
            raise BookingRefused("This session is full.")
        seat = Seat.objects.create(
            room=room,
            client=client,
            reserved_until=_hold_until(now),
            payment=_payment_open(room, client, now),
        )
        room_event_write(room, "seat_reserved", client, seat=seat.pk)
    return seat


# The first key of the two-key advisory lock a client's bookings queue on ("Book").
_CLIENT_BOOKING_LOCK_CLASS = 0x426F6F6B


def _client_booking_lock(client: User) -> None:
    """Serialise one client's bookings until the caller's transaction ends, so counting their
    unpaid reservations and adding one cannot interleave with another of their bookings.

    An advisory lock rather than the client's user row: a client may be an expert too, and
    bookings lock experts' calendars (and insert rooms referencing their rows) in whatever
    order clients book each other. Taken first in every booking transaction, so it never
    waits behind a lock that a holder of it wants. SQLite needs nothing (IMMEDIATE
    transactions: one writer).
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", _client_booking_lock_keys(client))


def _client_booking_lock_keys(client: User) -> tuple[int, int]:
    return (_CLIENT_BOOKING_LOCK_CLASS, client.pk)


def _unpaid_limit_check(client: User, expert: User, now: datetime, *, locked: bool = False) -> None:
    """Refuse a booking that would give the client more reservations waiting for the card
    than allowed, overall or with this expert: one client must not hold an expert's calendar
    (or many experts' calendars) without paying. A saved card (a hold placed later) is paid
    for this purpose. Counted under the client's booking lock, so concurrent bookings of one
    client cannot all pass the count."""
    if not locked:
        _client_booking_lock(client)
    unpaid = selectors.unpaid_reservations(client, expert, now)
    hold = settings.RESERVATION_HOLD_MINUTES
    overall = settings.UNPAID_RESERVATIONS_MAX
    if unpaid.overall >= overall:
        raise BookingRefused(
            f"You have {overall} bookings waiting for payment. Pay for one of them (or let it "
            f"lapse: an unpaid booking is released after {hold} minutes) before booking another."
        )
    per_expert = settings.UNPAID_RESERVATIONS_PER_EXPERT_MAX
    if unpaid.with_expert >= per_expert:
        raise BookingRefused(
            f"You have {per_expert} bookings with {expert.display_name} waiting for payment. "
            "Pay for them (or let them lapse) before booking another session with them."
        )


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
        description=room.title,
        starts_at=room.starts_at,
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
            room_event_write(
                seat.room, "card_saved", seat.client, seat=seat.pk, hold_at=str(payment.hold_at)
            )
        else:
            billing.payment_release(payment, reason="the reservation had already ended")


def seat_confirm(seat_id: int, *, actor: User | None = None) -> Seat:
    """The hold is authorized for a reservation: the seat is the client's. Safe to call twice.

    Called by billing's `payment_authorized` signal (see `seat_payment_authorized`).
    """
    now = timezone.now()
    with transaction.atomic():
        if connection.vendor == "postgresql":
            confirmed = _seat_confirm_statement(seat_id, actor, now)
            if confirmed is not None:
                emails.booking_confirmed(confirmed)
                return confirmed
            # Not a reservation in its time: below says why (or confirms a seat that became
            # one again meanwhile).
        # The room and both people come along: the event and the emails need them.
        seat = (
            Seat.objects.select_for_update(of=("self",))
            .select_related("room", "room__expert", "client")
            .get(pk=seat_id)
        )
        if seat.state == SeatState.CONFIRMED:
            return seat
        if seat.state == SeatState.CANCELED:
            raise BookingRefused("This booking was canceled; it cannot be confirmed.")
        if seat.state != SeatState.RESERVED or seat.reserved_until <= now:
            raise BookingRefused(
                "This reservation expired before it was confirmed, and the time was released. "
                "Book again to get a new slot."
            )
        seat_transition(seat, SeatState.CONFIRMED, confirmed_at=now)
        room_event_write(seat.room, "seat_confirmed", actor or seat.client, seat=seat.pk)
        emails.booking_confirmed(seat)
    return seat


def _seat_confirm_statement(seat_id: int, actor: User | None, now: datetime) -> Seat | None:
    """PostgreSQL: `seat_confirm`'s writes and read in one statement, each as the ORM path
    makes it: the guarded transition (`seat_transition` to confirmed, from the allowed sources,
    only while the reservation is in its time; the UPDATE locks the seat's row), its
    `seat_confirmed` event, and the seat with its room and both people for the emails. None
    when no seat changed. This runs inside the payment's authorization: one round trip where
    the ORM took four, and none of their Python."""
    sources = [
        state for state, targets in SEAT_TRANSITIONS.items() if SeatState.CONFIRMED in targets
    ]
    event = RoomEvent(kind="seat_confirmed", actor=actor)
    event_sql, event_params = insert_select(
        event,
        computed={
            "room_id": ("seat.room_id", ()),
            "data": ("jsonb_build_object('seat', seat.id)", ()),
            **({} if actor is not None else {"actor_id": ("seat.client_id", ())}),
        },
        source="seat",
    )
    seat_table, room_table, user_table = (
        _quote(model._meta.db_table) for model in (Seat, Room, User)
    )
    sql = (
        f"WITH seat AS (UPDATE {seat_table} SET state = %s, confirmed_at = %s"  # noqa: S608 - names from the models; values are parameters
        f" WHERE id = %s AND state IN ({', '.join(['%s'] * len(sources))})"
        " AND reserved_until > %s RETURNING *),"
        f" event AS ({event_sql})"
        f" SELECT {columns(Seat, 'seat')}, {columns(Room, 'room')},"
        f" {columns(User, 'expert')}, {columns(User, 'client')}"
        f" FROM seat JOIN {room_table} room ON room.id = seat.room_id"
        f" JOIN {user_table} expert ON expert.id = room.expert_id"
        f" JOIN {user_table} client ON client.id = seat.client_id"
    )
    params = [SeatState.CONFIRMED, now, seat_id, *sources, now, *event_params]
    with cursor_prepared() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    seat, at = load(Seat, row)
    room, at = load(Room, row, at)
    room.expert, at = load(User, row, at)
    seat.client, at = load(User, row, at)
    seat.room = room
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


def _booking_check_people(
    client: User, expert: User, *, around: datetime | None = None, lock_client: bool = False
) -> selectors.ExpertCalendar:
    """Refuse a booking its people cannot make. Returns the expert's calendar, read with them,
    with the overrides of the days around `around` (today if None). `lock_client`: take the
    client's booking lock (`_client_booking_lock`) in the same round trip."""
    if client.pk == expert.pk:
        raise BookingRefused("You cannot book your own session.")
    # A day either side of the UTC date holds the expert's local day in any zone.
    day = (around or timezone.now()).astimezone(UTC).date()
    parties = selectors.booking_parties(
        client,
        expert,
        day - timedelta(days=1),
        day + timedelta(days=1),
        lock=_client_booking_lock_keys(client) if lock_client else None,
    )
    if not parties.client_verified:
        raise BookingRefused("Verify your email address before booking; check your inbox.")
    if not parties.expert_approved:
        raise BookingRefused("This expert is not taking bookings.")
    if parties.blocked:
        raise BookingRefused("You cannot book this expert.")
    return parties.calendar


def _booking_check_offering(offering: Offering, *, group: bool) -> None:
    if not offering.is_active:
        raise BookingRefused("This offering is not available for booking any more.")
    if group and offering.capacity < 2:
        raise BookingRefused("This offering is private; clients book it from your free times.")
    if not group and offering.capacity > 1:
        raise BookingRefused("This is a group offering: take a seat in one of its sessions.")


def slot_check_policy(
    offering: Offering,
    slot_start: datetime,
    now: datetime,
    *,
    calendar: selectors.ExpertCalendar | None = None,
) -> Slot:
    """The slot starting at `slot_start`, or a refusal that says which rule it breaks.
    `calendar`: the expert's, when the caller has read it already (with the overrides of the
    slot's local day)."""
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
    # A slot lies inside one working interval of one local day (intervals end by midnight),
    # and that day is the local day it starts on: its grid is that day's alone.
    expert = offering.expert
    zone = calendar.zone if calendar else selectors.expert_zone(expert)
    local_day = slot_start.astimezone(zone).date()
    if calendar is None:
        weekly = selectors.weekly_intervals(expert)
        overrides = selectors.date_overrides(expert, local_day, local_day)
    else:
        weekly = calendar.weekly
        overrides = [override for override in calendar.overrides if override.day == local_day]
    slot = slot_at(slot_start, zone=zone, weekly=weekly, overrides=overrides, length=policy.length)
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


def slot_alternatives(offering: Offering, around: datetime) -> list[datetime]:
    return [slot.starts_at for slot in selectors.nearest_free_slots(offering, around)]


def rooms_release_stale(expert: User, start: datetime, end: datetime, now: datetime) -> None:
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
    rooms. Through the guarded transitions (a conditional UPDATE each): a sweep and a booking
    doing this at once expire each seat once."""
    expired = 0
    for seat in seats.filter(state=SeatState.RESERVED, reserved_until__lte=now).select_related(
        "room", "payment"
    ):
        # Payment, room, then seat: the lock order every writer follows.
        billing.payments_lock([seat.payment_id] if seat.payment_id else [])
        seat.room = Room.objects.select_for_update().get(pk=seat.room_id)
        try:
            seat_transition(seat, SeatState.EXPIRED, where=Q(reserved_until__lte=now))
        except InvalidTransition:
            continue  # paid, canceled or given more time since it was read: not expired
        expired += 1
        room_event_write(seat.room, "reservation_expired", None, seat=seat.pk)
        if seat.payment is not None:
            billing.payment_release(seat.payment, reason="the reservation expired unpaid")
        room = seat.room
        if room.kind == RoomKind.PRIVATE and room.state == RoomState.SCHEDULED:
            if not Seat.objects.holding_place().filter(room=room).exists():
                room_transition(room, RoomState.CANCELED, None, reason="reservation_expired")
    return expired
