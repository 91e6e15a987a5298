"""What a room's story is made of: its timeline entries, the people and facts in them, and
the story with the parts of its header. All frozen: the builders make them, nothing changes
them after."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from billing.models import Payment
from rooms.models import Room, Seat

# The kinds of entry, in the order they are listed when two happen at the same instant: a
# close stamps the room's events, the settlements and their commands with one `now`, and the
# room's change reads first, then what it cost.
CATEGORIES: dict[str, str] = {
    "room": "Room and bookings",
    "presence": "Presence",
    "media": "Media",
    "report": "Reports",
    "dispute": "Disputes",
    "settlement": "Settlements",
    "command": "Payment commands",
    "payment": "Payment events",
    "webhook": "Provider webhooks",
    "staff": "Staff actions",
}
_RANK = {category: rank for rank, category in enumerate(CATEGORIES)}


@dataclass(frozen=True)
class Person:
    pk: int
    name: str
    email: str
    role: str  # "expert", "client", "staff" or "" (someone else)


@dataclass(frozen=True)
class Fact:
    label: str
    value: str = ""
    # A list (intervals, a settlement's inputs): one line each.
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Link:
    """A record's admin change page: admin:<admin_name>_change with pk (the view reverses it,
    and drops the link when that admin is not registered)."""

    admin_name: str
    pk: int
    text: str


@dataclass(frozen=True)
class Entry:
    at: datetime
    category: str
    title: str
    who: Person | None = None
    # Who it was when no person did it: Parley itself, or the payment provider.
    who_label: str = "Parley"
    facts: tuple[Fact, ...] = ()
    links: tuple[Link, ...] = ()
    tone: str = ""  # "", "good", "warn", "bad" or "staff"
    # The stable tiebreak after the time: the kind's rank, then the row's id.
    pk: int = 0
    # "T+0:02:30": how long after the story's base moment (see Story.offset_base); set where
    # the entries are merged.
    offset: str = ""

    @property
    def sort_key(self) -> tuple[datetime, int, int]:
        return (self.at, _RANK[self.category], self.pk)


@dataclass(frozen=True)
class SeatSummary:
    seat: Seat
    client: Person
    state: str
    payment: Payment | None
    payment_state: str
    money: tuple[str, ...]  # held, authorized, charged, released, refunded
    settlement: str
    disputes: str
    rating: str


@dataclass(frozen=True)
class QualityRow:
    reporter: Person
    peer: Person
    samples: int
    rtt_ms: float | None
    packet_loss: float | None
    first_at: datetime
    last_at: datetime
    # From the first report to the last, in the story's zone.
    span: str = ""

    @property
    def rtt_text(self) -> str:
        return "—" if self.rtt_ms is None else f"{self.rtt_ms:.0f} ms"

    @property
    def loss_text(self) -> str:
        return "—" if self.packet_loss is None else f"{self.packet_loss * 100:.1f} %"


@dataclass(frozen=True)
class Story:
    room: Room
    expert: Person
    seats: tuple[SeatSummary, ...]
    entries: tuple[Entry, ...]
    facts: tuple[Fact, ...]
    totals: tuple[Fact, ...]
    quality: tuple[QualityRow, ...]
    # What "T+" counts from: the live start, or the scheduled start of a room never live.
    offset_base: str
    # Call quality is the median on PostgreSQL, the mean elsewhere (see load.Median).
    quality_average: str
    # The zone every time in the story is told in (the viewer's): "Europe/Berlin", "UTC".
    zone: str

    @property
    def counts(self) -> list[tuple[str, str, int]]:
        seen: dict[str, int] = {}
        for entry in self.entries:
            seen[entry.category] = seen.get(entry.category, 0) + 1
        return [(key, label, seen[key]) for key, label in CATEGORIES.items() if key in seen]
