"""Metering: what a seat is billed for, as interval arithmetic in whole seconds.

Billable time (PRODUCT.md, What is billed) = the seconds inside the room's live window during
which the client and the expert were both present AND their media link was up. Everything is
half-open [start, end) on whole epoch seconds, so the arithmetic is exact and a brute-force
second-by-second count gives the same number (the property tests check it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime

Interval = tuple[int, int]


def to_seconds(start: datetime, end: datetime) -> Interval:
    """An aware datetime range as whole epoch seconds: a started second counts only once it
    is complete, so rounding never bills a second nobody had."""
    return math.ceil(start.timestamp()), math.floor(end.timestamp())


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


def billable_seconds(
    *,
    live_window: Interval,
    expert_presence: Iterable[Interval],
    client_presence: Iterable[Interval],
    media_links: Iterable[Interval],
) -> int:
    """Seconds the pair was together with working media, inside the live window."""
    together = intersect(expert_presence, client_presence)
    connected = intersect(together, media_links)
    return total(intersect(connected, [live_window]))
