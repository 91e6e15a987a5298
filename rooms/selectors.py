"""Reads of rooms that more than one caller needs."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from allauth.account.models import EmailAddress
from django.conf import settings
from django.db import connection
from django.db.models import (
    Case,
    Count,
    DateTimeField,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
    When,
)
from django.db.models.functions import Least
from django.utils import timezone

from accounts.models import Block, ExpertProfile, ExpertStatus, User
from accounts.selectors import users_blocked_between
from accounts.sql import cursor_prepared
from billing.models import Payment, PaymentState, Settlement
from billing.pricing import cancellation_fee
from billing.selectors import dispute_window_ends
from rooms.availability import DateOverride, Policy, Slot, WeeklyInterval, bookable_slots
from rooms.ice import ice_servers
from rooms.models import (
    DROP_REASONS,
    AvailabilityOverride,
    AvailabilityRule,
    Offering,
    OverrideKind,
    Presence,
    Rating,
    Room,
    RoomKind,
    RoomState,
    Seat,
    SeatState,
)


def expert_zone(expert: User) -> zoneinfo.ZoneInfo:
    """Availability is kept in the zone of the expert profile (falling back to the account's)."""
    profile = ExpertProfile.objects.filter(user=expert).only("time_zone").first()
    return zoneinfo.ZoneInfo(profile.time_zone if profile else expert.time_zone)


def expert_profile(expert: User) -> ExpertProfile | None:
    return ExpertProfile.objects.filter(user=expert).first()


def expert_is_approved(expert: User) -> bool:
    return ExpertProfile.objects.filter(
        user=expert, status=ExpertStatus.APPROVED, user__is_active=True
    ).exists()


@dataclass(frozen=True)
class ExpertCalendar:
    """What decides whether the expert offers a time: their zone, weekly hours and the
    overrides of some days."""

    zone: zoneinfo.ZoneInfo
    weekly: list[WeeklyInterval]
    overrides: list[DateOverride]


@dataclass(frozen=True)
class BookingParties:
    """What a booking needs to know about its client and expert, read in one query."""

    client_verified: bool
    expert_approved: bool
    blocked: bool  # either has blocked the other
    calendar: ExpertCalendar


def booking_parties(
    client: User, expert: User, first: date, last: date, *, lock: tuple[int, int] | None = None
) -> BookingParties:
    """`expert_is_approved`, `users_blocked_between`, the client's verified address and the
    expert's calendar (`expert_zone`, `weekly_intervals`, `date_overrides` of first..last) in
    one round trip: a booking reads them all before it writes anything. `lock`: the keys of a
    transaction-scoped advisory lock the caller's transaction takes in that round trip (the
    read itself need not see what the lock's holders commit).

    Written in SQL: the same reads through the ORM (three EXISTS, a subquery, two lists) cost
    more Python time to build than the booking's writes, on a path that runs once per
    booking attempt. SQLite (`make run`) takes those reads one by one, and needs no lock
    (IMMEDIATE transactions: one writer at a time)."""
    if connection.vendor != "postgresql":
        zone = expert_zone(expert)
        return BookingParties(
            client_verified=EmailAddress.objects.filter(user=client, verified=True).exists(),
            expert_approved=expert_is_approved(expert),
            blocked=users_blocked_between(client.pk, expert.pk),
            calendar=ExpertCalendar(
                zone, weekly_intervals(expert), date_overrides(expert, first, last)
            ),
        )
    tables = {
        "user": User._meta.db_table,
        "address": EmailAddress._meta.db_table,
        "profile": ExpertProfile._meta.db_table,
        "block": Block._meta.db_table,
        "rule": AvailabilityRule._meta.db_table,
        "override": AvailabilityOverride._meta.db_table,
    }
    names = {name: connection.ops.quote_name(table) for name, table in tables.items()}
    lock_sql = ", pg_advisory_xact_lock(%(lock_class)s, %(lock_key)s)" if lock else ""
    sql = """
        SELECT u.is_active,
            EXISTS (SELECT 1 FROM {address} a WHERE a.user_id = %(client)s AND a.verified),
            EXISTS (SELECT 1 FROM {profile} p WHERE p.user_id = u.id AND p.status = %(approved)s),
            EXISTS (SELECT 1 FROM {block} b
                    WHERE (b.blocker_id = %(client)s AND b.blocked_id = u.id)
                       OR (b.blocker_id = u.id AND b.blocked_id = %(client)s)),
            (SELECT p.time_zone FROM {profile} p WHERE p.user_id = u.id),
            (SELECT json_agg(json_build_array(r.weekday, r.start_time, r.end_time))
             FROM {rule} r WHERE r.expert_id = u.id),
            (SELECT json_agg(json_build_array(o.date, o.kind, o.start_time, o.end_time))
             FROM {override} o
             WHERE o.expert_id = u.id AND o.date BETWEEN %(first)s AND %(last)s)
            {lock}
        FROM {user} u WHERE u.id = %(expert)s
    """.format(lock=lock_sql, **names)  # noqa: S608 - names from the models; values are parameters
    parameters: dict[str, Any] = {
        "client": client.pk,
        "expert": expert.pk,
        "approved": ExpertStatus.APPROVED.value,
        "first": first,
        "last": last,
    }
    if lock:
        parameters["lock_class"], parameters["lock_key"] = lock
    with cursor_prepared() as cursor:
        cursor.execute(sql, parameters)
        row = cursor.fetchone()
    if row is None:
        raise User.DoesNotExist(f"No user {expert.pk}.")
    is_active, client_verified, approved, blocked, profile_zone, rules, overrides = row[:7]
    return BookingParties(
        client_verified=bool(client_verified),
        expert_approved=bool(approved and is_active),
        blocked=bool(blocked),
        calendar=ExpertCalendar(
            zone=zoneinfo.ZoneInfo(profile_zone or expert.time_zone),
            weekly=[
                WeeklyInterval(weekday, time.fromisoformat(start), time.fromisoformat(end))
                for weekday, start, end in rules or []
            ],
            overrides=[
                DateOverride(
                    date.fromisoformat(day),
                    kind == OverrideKind.DAY_OFF,
                    time.fromisoformat(start) if start else None,
                    time.fromisoformat(end) if end else None,
                )
                for day, kind, start, end in overrides or []
            ],
        ),
    )


@dataclass(frozen=True)
class UnpaidReservations:
    overall: int
    with_expert: int


def unpaid_reservations(client: User, expert: User, now: datetime) -> UnpaidReservations:
    """The client's reservations still waiting for the card at `now` (a saved card counts as
    paid), in all and with `expert`. In SQL for the reason `booking_parties` is (SQLite
    through the ORM)."""
    if connection.vendor != "postgresql":
        counts = Seat.objects.filter(
            client=client,
            state=SeatState.RESERVED,
            reserved_until__gt=now,
            payment__state=PaymentState.PENDING,
        ).aggregate(overall=Count("pk"), with_expert=Count("pk", filter=Q(room__expert=expert)))
        return UnpaidReservations(overall=counts["overall"], with_expert=counts["with_expert"])
    tables = {
        "seat": Seat._meta.db_table,
        "payment": Payment._meta.db_table,
        "room": Room._meta.db_table,
    }
    sql = """
        SELECT count(*), count(*) FILTER (WHERE r.expert_id = %(expert)s)
        FROM {seat} s
        JOIN {payment} p ON p.id = s.payment_id
        JOIN {room} r ON r.id = s.room_id
        WHERE s.client_id = %(client)s AND s.state = %(reserved)s
          AND s.reserved_until > %(now)s AND p.state = %(pending)s
    """.format(**{name: connection.ops.quote_name(table) for name, table in tables.items()})  # noqa: S608 - names from the models; values are parameters
    parameters: dict[str, Any] = {
        "client": client.pk,
        "expert": expert.pk,
        "reserved": SeatState.RESERVED.value,
        "pending": PaymentState.PENDING.value,
        "now": now,
    }
    with cursor_prepared() as cursor:
        cursor.execute(sql, parameters)
        row = cursor.fetchone()
    overall, with_expert = row if row else (0, 0)
    return UnpaidReservations(overall=int(overall), with_expert=int(with_expert))


def offerings_bookable(expert: User) -> QuerySet[Offering]:
    return Offering.objects.filter(expert=expert, is_active=True)


def weekly_intervals(expert: User) -> list[WeeklyInterval]:
    return [
        WeeklyInterval(rule.weekday, rule.start_time, rule.end_time)
        for rule in AvailabilityRule.objects.filter(expert=expert)
    ]


def date_overrides(expert: User, first: date, last: date) -> list[DateOverride]:
    return [
        DateOverride(o.date, o.kind == OverrideKind.DAY_OFF, o.start_time, o.end_time)
        for o in AvailabilityOverride.objects.filter(expert=expert, date__range=(first, last))
    ]


def rooms_blocking(expert: User, start: datetime, end: datetime) -> QuerySet[Room]:
    """Rooms that keep the expert busy somewhere in [start, end), buffers included; each
    annotated with `busy_until`, the end of the time it keeps.

    A private room whose only seat is a reservation past its time does not count, even before
    the sweep cancels it: a stale reservation never blocks a slot. A closed room keeps the
    expert's time only up to its close plus its buffer after (never past its blocked end): a
    session that ended early frees the rest of its booked time. Rooms not closed keep their
    whole blocked range (the database's no-overlap constraint holds them; closed rooms are
    left to this check, made under the expert's calendar lock).
    """
    holding_seat = Seat.objects.holding_place().filter(room=OuterRef("pk"))
    after_buffer = ExpressionWrapper(
        F("blocked_until") - F("ends_at"), output_field=DurationField()
    )
    busy_until = Case(
        When(
            state=RoomState.CLOSED,
            closed_at__isnull=False,
            then=Least(
                F("blocked_until"),
                ExpressionWrapper(F("closed_at") + after_buffer, output_field=DateTimeField()),
            ),
        ),
        default=F("blocked_until"),
        output_field=DateTimeField(),
    )
    return (
        Room.objects.filter(expert=expert, blocked_from__lt=end)
        .annotate(busy_until=busy_until)
        .filter(Q(busy_until__gt=start) & Q(busy_until__gt=F("blocked_from")))
        .exclude(state=RoomState.CANCELED)
        .filter(Q(kind=RoomKind.GROUP) | ~Q(state=RoomState.SCHEDULED) | Exists(holding_seat))
    )


def busy_ranges(expert: User, start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    fields = ("blocked_from", "busy_until")  # busy_until: annotated by rooms_blocking
    ranges: list[tuple[datetime, datetime]] = list(
        rooms_blocking(expert, start, end).values_list(*fields)
    )
    return ranges


def offering_policy(offering: Offering) -> Policy:
    return Policy(
        length=offering.length,
        notice=timedelta(minutes=offering.notice_minutes),
        horizon=timedelta(days=offering.horizon_days),
        buffer_before=timedelta(minutes=offering.buffer_before_minutes),
        buffer_after=timedelta(minutes=offering.buffer_after_minutes),
    )


def offering_slots(offering: Offering, window_start: datetime, window_end: datetime) -> list[Slot]:
    """Bookable slots of an offering that start in [window_start, window_end)."""
    expert = offering.expert
    zone = expert_zone(expert)
    policy = offering_policy(offering)
    pad = timedelta(days=2)
    return bookable_slots(
        zone=zone,
        window_start=window_start,
        window_end=window_end,
        weekly=weekly_intervals(expert),
        overrides=date_overrides(expert, (window_start - pad).date(), (window_end + pad).date()),
        policy=policy,
        busy=busy_ranges(
            expert,
            window_start - policy.buffer_before - policy.length - pad,
            window_end + policy.buffer_after + policy.length + pad,
        ),
        now=timezone.now(),
    )


def nearest_free_slots(offering: Offering, around: datetime, count: int = 3) -> list[Slot]:
    """The free slots closest in time to `around` (before or after), for a "taken" answer."""
    slots = offering_slots(offering, around - timedelta(days=3), around + timedelta(days=7))
    return sorted(slots, key=lambda slot: abs(slot.starts_at - around))[:count]


def client_seats(client: User) -> QuerySet[Seat]:
    return Seat.objects.filter(client=client).select_related("room", "room__expert")


def expert_rooms(expert: User) -> QuerySet[Room]:
    return Room.objects.filter(expert=expert).prefetch_related("seats__client")


# "Your sessions" splits a person's sessions in three that never overlap: upcoming (still to
# happen or under way), past (over) and canceled. A session is over when its room has closed —
# a call often ends before its booked end (the expert ends it, everyone leaves, a no-show) and
# its bill, rating and dispute link are wanted at once — or when its booked end has passed (a
# room the sweep has not closed yet). Past lists run newest first, upcoming ones soonest first.
NOT_YET_OVER_STATES = (RoomState.SCHEDULED, RoomState.OPEN, RoomState.LIVE)


def client_seats_upcoming(client: User, now: datetime) -> QuerySet[Seat]:
    """Seats held (paid or waiting for payment) in sessions that are not over."""
    return (
        client_seats(client)
        .filter(state__in=(SeatState.CONFIRMED, SeatState.RESERVED))
        .filter(room__state__in=NOT_YET_OVER_STATES, room__ends_at__gt=now)
        .order_by("room__starts_at", "pk")
    )


def client_seats_past(client: User, now: datetime) -> QuerySet[Seat]:
    """Paid seats of sessions that are over, newest first, each with what it was charged
    (`charged_minor`, None before the close settles it), whether the client came (`came`:
    only then is there a call to rate) and their rating (`stars`, None before they rate)."""
    settlement = Settlement.objects.filter(payment_id=OuterRef("payment_id"))
    rating = Rating.objects.filter(room_id=OuterRef("room_id"), client_id=OuterRef("client_id"))
    presence = Presence.objects.filter(room_id=OuterRef("room_id"), user_id=OuterRef("client_id"))
    return (
        client_seats(client)
        .filter(state=SeatState.CONFIRMED)
        .exclude(room__state=RoomState.CANCELED)
        .filter(Q(room__state=RoomState.CLOSED) | Q(room__ends_at__lte=now))
        .annotate(
            charged_minor=Subquery(settlement.values("amount_minor")[:1]),
            came=Exists(presence),
            stars=Subquery(rating.values("stars")[:1]),
        )
        .order_by("-room__starts_at", "-pk")
    )


def client_seats_canceled(client: User) -> QuerySet[Seat]:
    return client_seats(client).filter(state=SeatState.CANCELED).order_by("-room__starts_at", "-pk")


def expert_rooms_upcoming(expert: User, now: datetime) -> QuerySet[Room]:
    return (
        expert_rooms(expert)
        .filter(state__in=NOT_YET_OVER_STATES, ends_at__gt=now)
        .order_by("starts_at", "pk")
    )


def expert_rooms_past(expert: User, now: datetime) -> QuerySet[Room]:
    return (
        expert_rooms(expert)
        .exclude(state=RoomState.CANCELED)
        .filter(Q(state=RoomState.CLOSED) | Q(ends_at__lte=now))
        .order_by("-starts_at", "-pk")
    )


def expert_rooms_canceled(expert: User) -> QuerySet[Room]:
    return expert_rooms(expert).filter(state=RoomState.CANCELED).order_by("-starts_at", "-pk")


def group_rooms_open_for_seats(expert: User) -> QuerySet[Room]:
    """Published group sessions that have not started, with `seats_taken` annotated."""
    now = timezone.now()
    taken = Count(
        "seats",
        filter=Q(seats__state=SeatState.CONFIRMED)
        | Q(seats__state=SeatState.RESERVED, seats__reserved_until__gt=now),
    )
    return Room.objects.filter(
        expert=expert, kind=RoomKind.GROUP, state=RoomState.SCHEDULED, starts_at__gt=now
    ).annotate(seats_taken=taken)


def seats_holding(room: Room) -> int:
    return Seat.objects.holding_place().filter(room=room).count()


def seat_is_expired(seat: Seat) -> bool:
    return seat.state == SeatState.EXPIRED or (
        seat.state == SeatState.RESERVED and seat.reserved_until <= timezone.now()
    )


def seat_cancellation_fee(seat: Seat, now: datetime | None = None) -> int:
    """What canceling this seat now would cost the client: nothing for a reservation, else
    the late-cancellation rule."""
    if seat.state != SeatState.CONFIRMED:
        return 0
    now = now or timezone.now()
    room = seat.room
    return cancellation_fee(
        max_amount_minor=room.max_amount_minor,
        late_fee_percent=room.late_cancel_fee_percent,
        hours_before_start=(room.starts_at - now).total_seconds() / 3600,
        free_hours=settings.FREE_CANCELLATION_HOURS,
    )


def participant(room: Room, user: User) -> dict[str, Any]:
    """How a participant appears to the others in the signaling protocol."""
    role = "expert" if user.pk == room.expert_id else "client"
    return {"id": user.pk, "name": user.display_name, "role": role}


def room_welcome(room_id: int, user: User, *, resumed: bool, now: datetime) -> dict[str, Any]:
    """The `welcome` message of docs/SIGNALING.md: who you are, who else is in (or dropped and
    still within the grace to come back), the ICE servers, the room's state and times."""
    room = Room.objects.get(pk=room_id)
    grace_start = now - timedelta(seconds=settings.RESUME_GRACE_SECONDS)
    status: dict[int, str] = {}
    # Oldest first, so each participant's latest connection decides.
    for user_id, closed_at, reason in (
        Presence.objects.filter(room=room)
        .filter(Q(closed_at__isnull=True) | Q(closed_at__gte=grace_start))
        .exclude(user_id=user.pk)
        .order_by("opened_at", "pk")
        .values_list("user_id", "closed_at", "close_reason")
    ):
        if status.get(user_id) == "present":
            continue
        if closed_at is None:
            status[user_id] = "present"
        elif reason in DROP_REASONS:
            status[user_id] = "reconnecting"
        else:
            status.pop(user_id, None)
    peers = [
        {**participant(room, peer), "status": status[peer.pk]}
        for peer in User.objects.filter(pk__in=status).order_by("pk")
    ]
    return {
        "type": "welcome",
        "you": participant(room, user),
        "peers": peers,
        "ice_servers": ice_servers(
            room_id=room.pk, user_id=user.pk, room_ends_at=room.ends_at, now=now
        ),
        "room": {
            "id": room.pk,
            "state": room.state,
            "starts_at": room.starts_at.isoformat(),
            "ends_at": room.ends_at.isoformat(),
            "live_at": room.live_at.isoformat() if room.live_at else None,
        },
        "server_time": now.isoformat(),
        "resumed": resumed,
        "heartbeat_seconds": settings.HEARTBEAT_SECONDS,
    }


def room_page_state(room: Room) -> dict[str, Any]:
    """What the room page needs to say where a participant stands, before and without a
    socket: state, times, and the terms that the running cost is computed from."""
    now = timezone.now()
    lobby_opens_at = room.starts_at - timedelta(minutes=settings.LOBBY_OPENS_MINUTES)
    return {
        "state": room.state,
        "startsAt": room.starts_at.isoformat(),
        "endsAt": room.ends_at.isoformat(),
        "liveAt": room.live_at.isoformat() if room.live_at else None,
        "lobbyOpensAt": lobby_opens_at.isoformat(),
        "closeReason": room.close_reason,
        "pricing": room.pricing,
        "priceMinor": room.price_minor,
        "capMinor": room.max_amount_minor,
        "currency": room.currency,
        "serverTime": now.isoformat(),
    }


CLOSE_REASON_TEXT = {
    "completed": "The session has finished.",
    "ended_by_expert": "The expert ended the session.",
    "time_limit": "The booked time ran out.",
    "empty": "Everyone had left the room for five minutes, so it closed.",
    "expert_no_show": "The expert did not join within ten minutes of the start.",
    "client_no_show": "The client did not join within ten minutes of the start.",
    "terminated_by_staff": "Parley staff ended the session.",
}


def room_summary(room: Room, viewer: User) -> dict[str, Any]:
    """After the close: why it ended and what each seat was charged, with the rule behind the
    number. A client sees their own seat; the expert sees every seat and their payout."""
    seats = Seat.objects.filter(room=room).exclude(payment=None).select_related("client")
    if viewer.pk != room.expert_id:
        seats = seats.filter(client=viewer)
    settlements = {
        s.payment_id: s
        for s in Settlement.objects.filter(payment_id__in=[seat.payment_id for seat in seats])
    }
    lines = []
    for seat in seats:
        settlement = settlements.get(seat.payment_id) if seat.payment_id else None
        if settlement is None:
            continue
        lines.append(
            {
                "client": seat.client,
                "settlement": settlement,
                "billable_seconds": settlement.inputs.get("billable_seconds", 0),
                # Settlements from before the early minutes counted as connected lack it.
                "connected_seconds": settlement.inputs.get(
                    "connected_seconds", settlement.inputs.get("billable_seconds", 0)
                ),
                "dispute_until": dispute_window_ends(settlement),
            }
        )
    return {
        "reason": room.close_reason,
        "reason_text": CLOSE_REASON_TEXT.get(room.close_reason, room.get_close_reason_display()),
        "lines": lines,
        "total_minor": sum(line["settlement"].amount_minor for line in lines),
        "payout_minor": sum(line["settlement"].payout_minor for line in lines),
        "currency": room.currency,
        "is_expert": viewer.pk == room.expert_id,
        "closed_at": room.closed_at,
    }


def room_ended_message(room: Room, user: User) -> dict[str, Any]:
    """The `ended` message of a closed room for one participant, from the database (what the
    close's broadcast says, for a socket that learns of the close by itself)."""
    charge = None
    if user.pk != room.expert_id:
        settlement = (
            Settlement.objects.filter(payment__seat__room=room, payment__seat__client=user)
            .order_by("-pk")
            .first()
        )
        charge = {
            "amount_minor": settlement.amount_minor if settlement else 0,
            "currency": room.currency,
            "billable_seconds": settlement.inputs.get("billable_seconds", 0) if settlement else 0,
        }
    return {"type": "ended", "reason": room.close_reason, "charge": charge}
