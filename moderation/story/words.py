"""The words the story is told in: the records' JSON keys as labels, durations, times and
states as people read them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from billing.models import PaymentState
from moderation.models import DisputeState
from rooms.models import CloseReason, RoomState

LABELS = {
    "billable_seconds": "Billable time",
    "billable_exact_seconds": "Billable time, exact",
    "cap_minor": "Cap",
    "price_minor": "Price",
    "charged_minor": "Charged",
    "fee_minor": "Fee",
    "refund_minor": "Refund",
    "no_show_fee_percent": "No-show fee",
    "live_window": "Live window",
    "expert_presence": "Expert present",
    "client_presence": "Client present",
    "media_links": "Media up",
    "hours_before": "Hours before the start",
    "hold_at": "Hold placed at",
    "was_in_the_room": "Was in the room",
}
_SYSTEM = "Parley"


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


def clock_text(at: datetime, day_of: datetime | None = None) -> str:
    """HH:MM:SS.mmm UTC, with the date when it is not the day of `day_of`."""
    at = at.astimezone(UTC)
    text = f"{at:%H:%M:%S}.{at.microsecond // 1000:03d}"
    if day_of is None or at.date() != day_of.astimezone(UTC).date():
        text = f"{at:%Y-%m-%d} {text}"
    return text


def moment_text(at: datetime) -> str:
    """A time people chose (a start, a hold's date): to the second, with the date."""
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def _offset_text(delta: timedelta) -> str:
    sign = "−" if delta < timedelta(0) else "+"
    total = abs(delta.total_seconds())
    hours, rest = divmod(int(total), 3600)
    minutes, secs = divmod(rest, 60)
    return f"T{sign}{hours}:{minutes:02d}:{secs:02d}"


def _label(key: str) -> str:
    return LABELS.get(key) or key.removesuffix("_minor").replace("_", " ").capitalize()


_FIRST_KEYS = ("outcome", "reason", "pricing", "price_minor", "cap_minor", "billable_seconds")


def _key_order(key: str) -> tuple[int, str]:
    return (_FIRST_KEYS.index(key) if key in _FIRST_KEYS else len(_FIRST_KEYS), key)


def _is_interval_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, int | float) for x in pair)
        for pair in value
    )


def _room_state(value: Any) -> str:
    return RoomState(value).label if value in RoomState.values else str(value)


def _payment_state(value: Any) -> str:
    return PaymentState(value).label if value in PaymentState.values else str(value)


def _close_reason(value: Any) -> str:
    return CloseReason(value).label if value in CloseReason.values else str(value or "—")


def _dispute_state(value: Any) -> str:
    return DisputeState(value).label if value in DisputeState.values else str(value)
