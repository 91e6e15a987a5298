"""The words the story is told in: durations, states, the payloads' keys as labels, and the
Teller, which says people, money, times and payload values as staff read them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

from django.db.models import TextChoices

from billing.pricing import format_money
from moderation.story.entries import Fact, Link, Person
from moderation.story.payloads import (
    Group,
    Intervals,
    Many,
    Moment,
    Money,
    Payload,
    Seconds,
    Text,
    UserRef,
    Value,
)
from rooms.models import Room

LABELS = {
    "billable_seconds": "Billable time",
    "connected_seconds": "Connected time, early minutes included",
    "billable_exact_seconds": "Billable time, exact",
    "cap_minor": "Cap",
    "price_minor": "Price",
    "charged_minor": "Charged",
    "fee_minor": "Fee",
    "refund_minor": "Refund",
    "no_show_fee_percent": "No-show fee",
    "booked": "Booked time",
    "live_window": "Live window",
    "expert_presence": "Expert present",
    "client_presence": "Client present",
    "media_links": "Media up",
    "hours_before": "Hours before the start",
    "hold_at": "Hold placed at",
    "was_in_the_room": "Was in the room",
}
# People read the decisive keys first (PostgreSQL keeps JSON keys in its own order).
_FIRST_KEYS = ("outcome", "reason", "pricing", "price_minor", "cap_minor", "billable_seconds")


def label(key: str) -> str:
    return LABELS.get(key) or key.removesuffix("_minor").replace("_", " ").capitalize()


def duration_text(seconds: float) -> str:
    """3 → "3.0 s", 150 → "2 min 30 s", 3725 → "1 h 02 min 05 s"; under a second in ms."""
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 10:
        return f"{seconds:.1f} s"
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def offset_text(delta: timedelta) -> str:
    sign = "−" if delta < timedelta(0) else "+"
    hours, rest = divmod(int(abs(delta.total_seconds())), 3600)
    minutes, secs = divmod(rest, 60)
    return f"T{sign}{hours}:{minutes:02d}:{secs:02d}"


def choice(choices: type[TextChoices], value: str) -> str:
    """A state's or a reason's label; an unknown one as it was stored."""
    return choices(value).label if value in choices.values else value or "—"


@dataclass(frozen=True)
class Teller:
    """Says things the same way in every entry: people by name, money in the room's currency,
    times in the viewer's zone, payload values in words."""

    room: Room
    people: Mapping[int, Person]
    zone: tzinfo
    # Whose seat each payment pays for: payment id → client id.
    payers: Mapping[int, int]

    def person(self, pk: int | None) -> Person | None:
        return None if pk is None else self.people.get(pk)

    def name(self, pk: int | None, *, email: bool = True) -> str:
        known = self.people.get(pk) if pk is not None else None
        if known is None:
            return f"user #{'?' if pk is None else pk}"
        return f"{known.name} <{known.email}>" if email else known.name

    def money(self, amount_minor: int | None, currency: str | None = None) -> str:
        if amount_minor is None:
            return "—"
        return format_money(amount_minor, currency or self.room.currency)

    def clock(self, at: datetime, day_of: datetime | None = None) -> str:
        """HH:MM:SS.mmm, with the date when it is not the day of `day_of`."""
        at = at.astimezone(self.zone)
        text = f"{at:%H:%M:%S}.{at.microsecond // 1000:03d}"
        if day_of is None or at.date() != day_of.astimezone(self.zone).date():
            text = f"{at:%Y-%m-%d} {text}"
        return text

    def moment(self, at: datetime) -> str:
        """A time people chose (a start, a hold's date): to the second, with date and zone."""
        return f"{at.astimezone(self.zone):%Y-%m-%d %H:%M:%S} {self.zone}"

    def span(self, start: datetime, end: datetime | None, day_of: datetime | None) -> str:
        if end is None:
            return f"{self.clock(start, day_of)} → still live"
        return (
            f"{self.clock(start, day_of)} → {self.clock(end, day_of)} "
            f"({duration_text((end - start).total_seconds())})"
        )

    def intervals(self, value: Intervals) -> tuple[str, ...]:
        day = self.room.starts_at
        return tuple(
            self.span(datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), day)
            for start, end in value.pairs
        ) or ("none",)

    def value(self, value: Value | None) -> str:
        match value:
            case None:
                return "—"
            case Text(text):
                return text
            case Money(minor):
                return self.money(minor)
            case Seconds(seconds):
                return f"{seconds:g} s ({duration_text(float(seconds))})"
            case UserRef(pk):
                return self.name(pk)
            case Moment(at):
                return self.moment(at)
            case Group(items):
                return "; ".join(f"{label(key)}: {self.value(item)}" for key, item in items)
            case Many(values):
                return ", ".join(self.value(item) for item in values) or "none"
            case Intervals(pairs):
                return ", ".join(f"{start:g}, {end:g}" for start, end in pairs) or "none"

    def facts(self, data: Payload, skip: Iterable[str] = ()) -> list[Fact]:
        """Every key of a payload, decisive ones first: intervals one line each."""
        order = {key: rank for rank, key in enumerate(_FIRST_KEYS)}
        items = sorted(data.items, key=lambda item: (order.get(item[0], len(order)), item[0]))
        return [
            Fact(label(key), lines=self.intervals(value))
            if isinstance(value, Intervals)
            else Fact(label(key), self.value(value))
            for key, value in items
            if key not in skip
        ]

    def payment_link(self, payment_id: int) -> Link:
        client = self.payers.get(payment_id)
        owner = f" ({self.name(client, email=False)})" if client is not None else ""
        return Link("billing_payment", payment_id, f"Payment #{payment_id}{owner}")
