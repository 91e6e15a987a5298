"""Metering: what a seat is billed for, as interval arithmetic on integers.

Billable time (docs/RULES.md, What is billed) = the time inside the room's live window AND
inside the booked time (start to paid end) during which the client and the expert were both
present AND their media link was up.
The room may go live early, once both are in the lobby (up to 10 minutes before the start), but
the early minutes are free: the meter starts at the booked start and the call still ends at the
booked end, so a customer gets exactly the minutes they booked and pays for none before them.
The connected time (the same, but over the whole live window, early minutes included) decides
whether a call happened: a call connected for a minute or more is not a failed call, so the
under-a-minute rule and the fixed price's threshold are judged on it.

Intervals are half-open [start, end) on integer epoch microseconds, so union and intersection
are exact (a brute-force count of units gives the same number; the property tests check it),
and the total is rounded down to whole seconds once, at the end: a second is billed only when
the pair had a whole second of it, and a resume — one presence closing and the next opening in
the same instant — loses nothing to rounding (rounding each piece first would drop a second per
resume).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

Interval = tuple[int, int]
SECOND = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(start: datetime, end: datetime) -> Interval:
    """An aware datetime range as integer epoch microseconds (exact: no float on the way)."""
    return (start - _EPOCH) // _MICROSECOND, (end - _EPOCH) // _MICROSECOND


def as_seconds(intervals: Iterable[Interval]) -> list[list[float]]:
    """Merged intervals in epoch seconds, for people to read (settlement inputs)."""
    return [[start / SECOND, end / SECOND] for start, end in union(intervals)]


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """Merge overlapping or touching intervals; drops empty ones. Sorted, disjoint result."""
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[0] < i[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """The seconds in both sets (inputs need not be merged)."""
    left, right = union(a), union(b)
    result: list[Interval] = []
    i = j = 0
    while i < len(left) and j < len(right):
        start = max(left[i][0], right[j][0])
        end = min(left[i][1], right[j][1])
        if start < end:
            result.append((start, end))
        if left[i][1] < right[j][1]:
            i += 1
        else:
            j += 1
    return result


def total(intervals: Iterable[Interval]) -> int:
    return sum(end - start for start, end in union(intervals))


def billable_time(
    *,
    live_window: Interval,
    booked: Interval,
    expert_presence: Iterable[Interval],
    client_presence: Iterable[Interval],
    media_links: Iterable[Interval],
) -> int:
    """How long the pair was together with working media inside both the live window and the
    booked time (the early minutes of a room that went live in the lobby are free), in the
    intervals' own unit."""
    together = intersect(expert_presence, client_presence)
    connected = intersect(together, media_links)
    return total(intersect(intersect(connected, [live_window]), [booked]))


def connected_time(
    *,
    live_window: Interval,
    expert_presence: Iterable[Interval],
    client_presence: Iterable[Interval],
    media_links: Iterable[Interval],
) -> int:
    """How long the pair was together with working media inside the live window, the early
    minutes included: what decides whether a call happened at all (under 60 s is free), while
    only the billable time inside the booked time is priced per minute."""
    together = intersect(expert_presence, client_presence)
    return total(intersect(intersect(together, media_links), [live_window]))


def whole_seconds(micros: int) -> int:
    """Rounded down: a second nobody had in full is never billed."""
    return micros // SECOND
