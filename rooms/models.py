"""Offerings, weekly availability, rooms and seats.

Amounts are integers in minor units of `currency`. Times are aware datetimes stored in UTC;
availability rules are wall-clock times in the expert's own zone (accounts.ExpertProfile).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.append_only import AppendOnlyModel
from accounts.choices import CURRENCY_CHOICES

MAX_GROUP_CAPACITY = 3  # the expert plus three clients is the limit of a browser mesh call


class Pricing(models.TextChoices):
    FIXED = "fixed", "Fixed price"
    PER_MINUTE = "per_minute", "Per minute (booked length is the cap)"


class Offering(models.Model):
    """What an expert sells: a kind of session, its price and its booking policy."""

    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="offerings"
    )
    title = models.CharField(max_length=120)
    description = models.TextField(blank=True, max_length=4000)
    length_minutes = models.PositiveSmallIntegerField()
    pricing = models.CharField(max_length=16, choices=Pricing.choices, default=Pricing.FIXED)
    # The fixed price, or for per-minute pricing the rate per started minute.
    price_minor = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    capacity = models.PositiveSmallIntegerField(default=1)
    notice_minutes = models.PositiveIntegerField(default=120)
    buffer_before_minutes = models.PositiveSmallIntegerField(default=0)
    buffer_after_minutes = models.PositiveSmallIntegerField(default=0)
    horizon_days = models.PositiveSmallIntegerField(default=60)
    late_cancel_fee_percent = models.PositiveSmallIntegerField(default=50)
    no_show_fee_percent = models.PositiveSmallIntegerField(default=50)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["expert_id", "length_minutes", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(length_minutes__gte=15, length_minutes__lte=180),
                name="offering_length_15_to_180",
            ),
            models.CheckConstraint(
                condition=Q(capacity__gte=1, capacity__lte=MAX_GROUP_CAPACITY),
                name="offering_capacity_1_to_3",
            ),
            models.CheckConstraint(
                condition=Q(late_cancel_fee_percent__lte=100, no_show_fee_percent__lte=100),
                name="offering_fee_percent_at_most_100",
            ),
            models.CheckConstraint(
                condition=Q(horizon_days__gte=1, horizon_days__lte=365),
                name="offering_horizon_1_to_365_days",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.title} ({self.length_minutes} min)"

    @property
    def length(self) -> timedelta:
        return timedelta(minutes=self.length_minutes)

    @property
    def max_amount_minor(self) -> int:
        """The most a seat can cost: the hold placed at booking."""
        if self.pricing == Pricing.PER_MINUTE:
            return self.price_minor * self.length_minutes
        return self.price_minor


class Weekday(models.IntegerChoices):
    MONDAY = 0, "Monday"
    TUESDAY = 1, "Tuesday"
    WEDNESDAY = 2, "Wednesday"
    THURSDAY = 3, "Thursday"
    FRIDAY = 4, "Friday"
    SATURDAY = 5, "Saturday"
    SUNDAY = 6, "Sunday"


class AvailabilityRule(models.Model):
    """A weekly working interval in the expert's local wall-clock time (e.g. Mon 09:00–12:00).

    An interval ends on the day it starts; hours past midnight are a rule on the next day.
    """

    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="availability_rules"
    )
    weekday = models.PositiveSmallIntegerField(choices=Weekday.choices)
    start_time = models.TimeField()
    end_time = models.TimeField()

    class Meta:
        ordering = ["weekday", "start_time"]
        constraints = [
            models.CheckConstraint(
                condition=Q(start_time__lt=models.F("end_time")), name="rule_starts_before_end"
            ),
            models.CheckConstraint(condition=Q(weekday__lte=6), name="rule_weekday_0_to_6"),
        ]

    def __str__(self) -> str:
        return f"{self.get_weekday_display()} {self.start_time:%H:%M}–{self.end_time:%H:%M}"


class OverrideKind(models.TextChoices):
    DAY_OFF = "day_off", "Day off"
    EXTRA = "extra", "Extra hours"


class AvailabilityOverride(models.Model):
    """A date that differs from the weekly rules: a day off, or extra hours on that date."""

    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="availability_overrides"
    )
    date = models.DateField()
    kind = models.CharField(max_length=8, choices=OverrideKind.choices)
    start_time = models.TimeField(null=True, blank=True)
    end_time = models.TimeField(null=True, blank=True)

    class Meta:
        ordering = ["date", "start_time"]
        constraints = [
            # A day off has no hours; extra hours have both ends, in order.
            models.CheckConstraint(
                condition=(
                    Q(kind=OverrideKind.DAY_OFF, start_time__isnull=True, end_time__isnull=True)
                    | Q(
                        kind=OverrideKind.EXTRA,
                        start_time__isnull=False,
                        end_time__isnull=False,
                        start_time__lt=models.F("end_time"),
                    )
                ),
                name="override_hours_match_kind",
            ),
            models.UniqueConstraint(
                fields=["expert", "date"],
                condition=Q(kind=OverrideKind.DAY_OFF),
                name="override_one_day_off_per_date",
            ),
        ]

    def __str__(self) -> str:
        if self.kind == OverrideKind.DAY_OFF:
            return f"{self.date}: day off"
        return f"{self.date}: extra {self.start_time:%H:%M}–{self.end_time:%H:%M}"


class RoomKind(models.TextChoices):
    PRIVATE = "private", "Private session"
    GROUP = "group", "Group session"


class RoomState(models.TextChoices):
    SCHEDULED = "scheduled", "Scheduled"
    OPEN = "open", "Lobby open"
    LIVE = "live", "Live"
    CLOSED = "closed", "Ended"
    CANCELED = "canceled", "Canceled"


class CloseReason(models.TextChoices):
    COMPLETED = "completed", "Completed"
    ENDED_BY_EXPERT = "ended_by_expert", "Ended by the expert"
    TIME_LIMIT = "time_limit", "The paid time was reached"
    EMPTY = "empty", "Everyone had left"
    EXPERT_NO_SHOW = "expert_no_show", "The expert did not join"
    CLIENT_NO_SHOW = "client_no_show", "No client joined"
    TERMINATED_BY_STAFF = "terminated_by_staff", "Ended by Parley staff"


# The room state machine (docs/RULES.md, Room states). rooms/services/ is its only writer.
ROOM_TRANSITIONS: dict[str, frozenset[str]] = {
    RoomState.SCHEDULED: frozenset({RoomState.OPEN, RoomState.CANCELED}),
    RoomState.OPEN: frozenset({RoomState.LIVE, RoomState.CLOSED, RoomState.CANCELED}),
    RoomState.LIVE: frozenset({RoomState.CLOSED}),
    RoomState.CLOSED: frozenset(),
    RoomState.CANCELED: frozenset(),
}


class Room(models.Model):
    """One call of one expert at one time, with the terms its seats were sold on.

    The terms (pricing, price, fees) are copied from the offering when the room is created,
    so an expert editing an offering never changes what a booked client agreed to.
    `blocked_from`/`blocked_until` are the start and end widened by the offering's buffers:
    PostgreSQL refuses two rooms of one expert, neither canceled nor closed, whose blocked ranges
    overlap; a closed room blocks only up to its close plus its buffer after (`rooms_blocking`).
    """

    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="hosted_rooms"
    )
    offering = models.ForeignKey(
        Offering, null=True, blank=True, on_delete=models.SET_NULL, related_name="rooms"
    )
    kind = models.CharField(max_length=8, choices=RoomKind.choices)
    title = models.CharField(max_length=120)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    blocked_from = models.DateTimeField()
    blocked_until = models.DateTimeField()
    capacity = models.PositiveSmallIntegerField(default=1)
    state = models.CharField(max_length=10, choices=RoomState.choices, default=RoomState.SCHEDULED)
    cancel_reason = models.CharField(max_length=40, blank=True)
    opened_at = models.DateTimeField(null=True, blank=True)
    # The live window: from the first moment the expert and a seat holder were both present.
    live_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=24, choices=CloseReason.choices, blank=True)
    # Bumped on every reschedule: calendar apps replace an invite with a higher SEQUENCE.
    sequence = models.PositiveIntegerField(default=0)
    pricing = models.CharField(max_length=16, choices=Pricing.choices)
    price_minor = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    late_cancel_fee_percent = models.PositiveSmallIntegerField()
    no_show_fee_percent = models.PositiveSmallIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["starts_at", "pk"]
        indexes = [models.Index(fields=["expert", "starts_at"]), models.Index(fields=["state"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(starts_at__lt=models.F("ends_at")), name="room_starts_before_end"
            ),
            models.CheckConstraint(
                condition=Q(blocked_from__lte=models.F("starts_at"))
                & Q(blocked_until__gte=models.F("ends_at")),
                name="room_blocked_range_covers_call",
            ),
            models.CheckConstraint(
                condition=Q(capacity__gte=1, capacity__lte=MAX_GROUP_CAPACITY),
                name="room_capacity_1_to_3",
            ),
            models.CheckConstraint(
                condition=Q(state__in=RoomState.values), name="room_state_valid"
            ),
            # A closed room always says why and when; no other room has a close reason.
            models.CheckConstraint(
                condition=(Q(state=RoomState.CLOSED, closed_at__isnull=False) & ~Q(close_reason=""))
                | (~Q(state=RoomState.CLOSED) & Q(close_reason="")),
                name="room_closed_has_reason",
            ),
            # The no-overlap exclusion constraint is PostgreSQL-only SQL: see migration 0002.
        ]

    def __str__(self) -> str:
        return f"{self.title} at {self.starts_at:%Y-%m-%d %H:%M} UTC"

    @property
    def max_amount_minor(self) -> int:
        if self.pricing == Pricing.PER_MINUTE:
            minutes = int((self.ends_at - self.starts_at).total_seconds() // 60)
            return self.price_minor * minutes
        return self.price_minor

    @property
    def cancel_reason_display(self) -> str:
        return CANCEL_REASONS.get(self.cancel_reason, self.cancel_reason.replace("_", " "))


CANCEL_REASONS = {
    "client_canceled": "by the client",
    "expert_canceled": "by the expert",
    "reservation_expired": "the reservation expired unpaid",
    "account_suspended": "the account was suspended",
    "canceled_by_staff": "by Parley staff",
}


class RoomEvent(AppendOnlyModel):
    """Append-only history of a room: transitions, bookings, cancellations, reschedules."""

    room = models.ForeignKey(Room, on_delete=models.PROTECT, related_name="events")
    kind = models.CharField(max_length=40)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(AppendOnlyModel.Meta):
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class SeatState(models.TextChoices):
    RESERVED = "reserved", "Reserved, waiting for payment"
    CONFIRMED = "confirmed", "Confirmed"
    EXPIRED = "expired", "Reservation expired"
    CANCELED = "canceled", "Canceled"


SEAT_TRANSITIONS: dict[str, frozenset[str]] = {
    SeatState.RESERVED: frozenset({SeatState.CONFIRMED, SeatState.EXPIRED, SeatState.CANCELED}),
    SeatState.CONFIRMED: frozenset({SeatState.CANCELED}),
    SeatState.EXPIRED: frozenset(),
    SeatState.CANCELED: frozenset(),
}
# Seats that hold a place in a room. A reservation past `reserved_until` no longer does, even
# before the sweep marks it expired: see `Seat.objects.holding_place`.
HOLDING_STATES = (SeatState.RESERVED, SeatState.CONFIRMED)


class SeatQuerySet(models.QuerySet["Seat"]):
    def holding_place(self) -> SeatQuerySet:
        return self.filter(
            Q(state=SeatState.CONFIRMED)
            | Q(state=SeatState.RESERVED, reserved_until__gt=timezone.now())
        )


class Seat(models.Model):
    """One client's entitlement to one room; a private room has exactly one."""

    room = models.ForeignKey(Room, on_delete=models.PROTECT, related_name="seats")
    client = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="seats"
    )
    state = models.CharField(max_length=10, choices=SeatState.choices, default=SeatState.RESERVED)
    reserved_until = models.DateTimeField()
    confirmed_at = models.DateTimeField(null=True, blank=True)
    canceled_at = models.DateTimeField(null=True, blank=True)
    cancel_reason = models.CharField(max_length=40, blank=True)
    # What the cancellation policy decided the client owes (minor units of the room currency).
    cancel_fee_minor = models.PositiveIntegerField(default=0)
    # The hold that pays for the seat; billing knows payments, the seat knows its payment.
    payment = models.OneToOneField(
        "billing.Payment", null=True, blank=True, on_delete=models.PROTECT, related_name="seat"
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = SeatQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            # A client holds at most one live seat in a room.
            models.UniqueConstraint(
                fields=["room", "client"],
                condition=Q(state__in=HOLDING_STATES),
                name="seat_one_per_client_per_room",
            ),
            models.CheckConstraint(
                condition=Q(state__in=SeatState.values), name="seat_state_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Seat {self.pk} of room {self.room_id} ({self.state})"


# How a presence ended when its participant may still come back within the grace: the socket
# dropped, or the sweeper closed it after its heartbeats stopped.
DROP_REASONS = ("dropped", "stale")


class Presence(models.Model):
    """One connection of one participant to a room, as the server saw it.

    A participant has at most one open presence per room: a new connection replaces the old
    one. A connection whose heartbeats stop is closed by the sweeper at its last heartbeat,
    so a process that dies leaves no ghost.
    """

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="presences")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="presences"
    )
    connection_id = models.CharField(max_length=64, unique=True)
    process = models.CharField(max_length=100, blank=True)
    opened_at = models.DateTimeField()
    last_heartbeat_at = models.DateTimeField()
    closed_at = models.DateTimeField(null=True, blank=True)
    close_reason = models.CharField(max_length=24, blank=True)

    class Meta:
        ordering = ["opened_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["room", "user"],
                condition=Q(closed_at__isnull=True),
                name="presence_one_open_per_participant",
            ),
            models.CheckConstraint(
                condition=Q(closed_at__isnull=True) | Q(closed_at__gte=models.F("opened_at")),
                name="presence_ends_after_it_starts",
            ),
        ]
        indexes = [models.Index(fields=["room", "user"]), models.Index(fields=["closed_at"])]

    def __str__(self) -> str:
        return f"{self.user_id} in room {self.room_id} from {self.opened_at:%H:%M:%S}"


class MediaLink(models.Model):
    """An interval in which the expert and one client had working media, as one side said."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="media_links")
    client = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reported_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    candidate_type = models.CharField(max_length=10, blank=True)

    class Meta:
        ordering = ["started_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["room", "client", "reported_by"],
                condition=Q(ended_at__isnull=True),
                name="media_link_one_open_per_reporter",
            ),
            models.CheckConstraint(
                condition=Q(ended_at__isnull=True) | Q(ended_at__gte=models.F("started_at")),
                name="media_link_ends_after_it_starts",
            ),
        ]

    def __str__(self) -> str:
        return f"media {self.room_id}/{self.client_id} from {self.started_at:%H:%M:%S}"


class CallStats(models.Model):
    """A participant's periodic summary of its connection to one peer (from getStats), kept
    for call-quality analytics: round trip, loss, bitrates and the kind of ICE path."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="call_stats")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+"
    )
    peer = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    rtt_ms = models.FloatField()
    packet_loss = models.FloatField(help_text="Share of packets lost, 0 to 1.")
    bitrate_in_kbps = models.FloatField()
    bitrate_out_kbps = models.FloatField()
    candidate_type = models.CharField(max_length=10, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["room", "reporter", "peer", "created_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(rtt_ms__gte=0)
                & Q(packet_loss__gte=0)
                & Q(packet_loss__lte=1)
                & Q(bitrate_in_kbps__gte=0)
                & Q(bitrate_out_kbps__gte=0),
                name="call_stats_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"stats {self.reporter_id}→{self.peer_id} in room {self.room_id}"


class Rating(models.Model):
    """A client's rating of a session they were in, given after it closed; one per client per
    room (giving it again replaces it). Shown on the expert's card and page, unless staff hid
    it (`rooms.services.feedback.rating_hide`, with who, when and why as a room event)."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="ratings")
    client = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ratings_given"
    )
    expert = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ratings_received"
    )
    stars = models.PositiveSmallIntegerField()
    comment = models.TextField(max_length=1000, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    # Hidden ratings count in no average and show in no list; the room's events say who hid
    # it, when and why.
    hidden = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["expert", "-created_at"], name="rating_expert_recent")]
        constraints = [
            models.UniqueConstraint(fields=["room", "client"], name="rating_one_per_client"),
            models.CheckConstraint(
                condition=Q(stars__gte=1, stars__lte=5), name="rating_stars_1_to_5"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.stars}★ for room {self.room_id} by user {self.client_id}"
