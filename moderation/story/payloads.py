"""The records' free-form JSON (RoomEvent.data, PaymentEvent.data, StaffAction.data,
Settlement.inputs, a webhook's payload), read once, when the story is loaded, into typed
values.

Old rows and other writers may have other shapes, and a story must still show them. So a
wrong shape is never an error here: a field the story decides on (`dispute`, `command`,
`seats`, …) that has not the type it should reads as absent, and its entry falls back to the
generic wording; every key is also kept as a fact, typed by its name and shape (money,
seconds, a person, a time, intervals), plain text at worst. A payload that is not a JSON
object at all is kept whole, as one fact named "data"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Keys that name a person by id, and keys that name another record by id.
PEOPLE_KEYS = ("user", "client", "expert", "blocked", "subject")
RECORD_KEYS = ("seat", "dispute", "report", "command")


@dataclass(frozen=True)
class Money:
    minor: int  # in the room's currency


@dataclass(frozen=True)
class Seconds:
    value: int | float


@dataclass(frozen=True)
class UserRef:
    pk: int


@dataclass(frozen=True)
class Moment:
    at: datetime


@dataclass(frozen=True)
class Intervals:
    pairs: tuple[tuple[float, float], ...]  # epoch seconds


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Group:
    items: tuple[tuple[str, Value], ...]


@dataclass(frozen=True)
class Many:
    values: tuple[Value, ...]


Value = Money | Seconds | UserRef | Moment | Intervals | Text | Group | Many


@dataclass(frozen=True)
class Payload:
    # Every key with a value, in the stored order.
    items: tuple[tuple[str, Value], ...] = ()
    # The fields the story decides on: None or empty when absent or of another type.
    seat: int | None = None
    report: int | None = None
    command: int | None = None
    # A dispute's id in Parley (room events) or at the provider (payment events).
    dispute: int | str | None = None
    user: int | None = None
    client: int | None = None
    connection: str | None = None
    resumed: bool = False
    old: str = ""
    new: str = ""
    reason: str = ""
    state: str = ""
    ran_at: datetime | None = None
    # A close's seats: what it measured and charged of each.
    seats: tuple[Payload, ...] = ()
    # A ban's rooms: those it took its subject out of and those it canceled.
    rooms: frozenset[int] = frozenset()

    def value(self, key: str) -> Value | None:
        return next((value for name, value in self.items if name == key), None)

    def people(self) -> set[int]:
        """Everyone the payload names by id."""
        named = {value.pk for _, value in self.items if isinstance(value, UserRef)}
        return named.union(*(seat.people() for seat in self.seats))


def payload_parse(raw: Any) -> Payload:
    if raw is None or raw == {}:
        return Payload()
    if not isinstance(raw, dict):
        return Payload(items=(("data", Text(str(raw))),))
    rooms = [pk for key in ("rooms", "upcoming_canceled") for pk in _list(raw.get(key))]
    return Payload(
        items=tuple(
            (key, _intervals(value) or _value(key, value))
            for key, value in raw.items()
            if value is not None and value != ""
        ),
        seat=_int(raw.get("seat")),
        report=_int(raw.get("report")),
        command=_int(raw.get("command")),
        dispute=_str(raw.get("dispute")) or _int(raw.get("dispute")),
        user=_int(raw.get("user")),
        client=_int(raw.get("client")),
        connection=_str(raw.get("connection")),
        resumed=raw.get("resumed") is True,
        old=_scalar(raw.get("old")),
        new=_scalar(raw.get("new")),
        reason=_scalar(raw.get("reason")),
        state=_scalar(raw.get("state")),
        ran_at=_datetime(raw.get("ran_at")),
        seats=tuple(
            payload_parse(seat) for seat in _list(raw.get("seats")) if isinstance(seat, dict)
        ),
        rooms=frozenset(pk for pk in rooms if isinstance(pk, int)),
    )


@dataclass(frozen=True)
class ProviderObject:
    """The object a provider's webhook event is about (Stripe's `data.object`)."""

    ids: frozenset[str]  # its own id and its PaymentIntent's
    status: str
    amounts: tuple[tuple[str, int], ...]


def provider_object_parse(payload: Any) -> ProviderObject:
    data = payload.get("data") if isinstance(payload, dict) else None
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        return ProviderObject(frozenset(), "", ())
    amounts = ("amount", "amount_received", "amount_capturable", "amount_refunded")
    return ProviderObject(
        ids=frozenset(filter(None, (_str(obj.get("id")), _str(obj.get("payment_intent"))))),
        status=str(obj["status"]) if obj.get("status") else "",
        amounts=tuple((key, obj[key]) for key in amounts if _int(obj.get(key)) is not None),
    )


def _value(key: str, raw: Any) -> Value:
    """One JSON value, typed by its key's name and its shape."""
    if raw is None or raw == "":
        return Text("—")
    if isinstance(raw, bool):
        return Text("yes" if raw else "no")
    number = isinstance(raw, int | float)
    if key.endswith("_minor") and isinstance(raw, int):
        return Money(raw)
    if key.endswith("seconds") and number:
        return Seconds(raw)
    if key.endswith("_percent") and number:
        return Text(f"{raw} %")
    if key in PEOPLE_KEYS:
        return UserRef(raw) if isinstance(raw, int) else Text(f"user #{raw}")
    if key in RECORD_KEYS and isinstance(raw, int):
        return Text(f"{key} #{raw}")
    if key.endswith("_at") and (at := _datetime(raw)) is not None:
        return Moment(at)
    if isinstance(raw, dict):
        return Group(tuple((str(k), _value(str(k), v)) for k, v in raw.items()))
    if isinstance(raw, list):
        return Many(tuple(_value(key, item) for item in raw))
    return Text(str(raw))


def _intervals(raw: Any) -> Intervals | None:
    """[[start, end], …] in epoch seconds, or None when the value is something else."""
    if not isinstance(raw, list):
        return None
    pairs = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2):
            return None
        if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in pair):
            return None
        pairs.append((float(pair[0]), float(pair[1])))
    return Intervals(tuple(pairs))


def _int(raw: Any) -> int | None:
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else None


def _str(raw: Any) -> str | None:
    return raw if isinstance(raw, str) else None


def _scalar(raw: Any) -> str:
    """A state or a reason: a string, or a number written as one; anything else is absent."""
    return str(raw) if isinstance(raw, str | int | float) and not isinstance(raw, bool) else ""


def _list(raw: Any) -> list[Any]:
    return raw if isinstance(raw, list) else []


def _datetime(raw: Any) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None
