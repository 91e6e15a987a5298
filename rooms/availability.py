"""Bookable slots from weekly rules, date overrides and busy ranges — pure functions, no ORM.

Wall-clock rules meet real time here, so the DST decisions are made once, deliberately:

* Slot starts are laid out on each local day from the start of every working interval, one
  slot length apart (09:00, 09:45, 10:30 … for 45 minutes), ending no later than the
  interval's end on the wall clock. A rule of 09:00 Europe/Berlin is 09:00 in Berlin in
  winter and in summer, so its UTC time moves with DST.
* A local start that does not exist (the hour skipped when clocks go forward) is dropped: no
  slot is offered at 02:30 on that night.
* A local start that exists twice (the hour repeated when clocks go back) is offered once, at
  its first occurrence (``fold=0``).
* A slot lasts its length in real time. On the two DST nights a slot that spans the change
  therefore ends an hour earlier or later on the wall clock than the rule's grid suggests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True, order=True)
class Slot:
    starts_at: datetime  # aware, UTC
    ends_at: datetime

    def blocked_range(self, before: timedelta, after: timedelta) -> tuple[datetime, datetime]:
        return self.starts_at - before, self.ends_at + after


@dataclass(frozen=True)
class WeeklyInterval:
    weekday: int  # 0 = Monday
    start: time
    end: time


@dataclass(frozen=True)
class DateOverride:
    day: date
    day_off: bool
    start: time | None = None
    end: time | None = None


@dataclass(frozen=True)
class Policy:
    length: timedelta
    notice: timedelta
    horizon: timedelta
    buffer_before: timedelta
    buffer_after: timedelta


def local_to_utc(day: date, at: time, zone: ZoneInfo) -> datetime | None:
    """The UTC instant of a local wall-clock time; None when that time does not exist."""
    naive = datetime.combine(day, at)
    aware = naive.replace(tzinfo=zone, fold=0)
    if aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        return None  # skipped by a DST change
    return aware.astimezone(UTC)


def working_intervals(
    day: date, weekly: Sequence[WeeklyInterval], overrides: Sequence[DateOverride]
) -> list[tuple[time, time]]:
    """The local working intervals of one day, merged and sorted."""
    todays = [override for override in overrides if override.day == day]
    intervals: list[tuple[time, time]] = []
    if not any(override.day_off for override in todays):
        intervals = [(rule.start, rule.end) for rule in weekly if rule.weekday == day.weekday()]
    intervals += [
        (override.start, override.end)
        for override in todays
        if not override.day_off and override.start is not None and override.end is not None
    ]
    merged: list[tuple[time, time]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def candidate_slots(
    *,
    zone: ZoneInfo,
    first_day: date,
    last_day: date,
    weekly: Sequence[WeeklyInterval],
    overrides: Sequence[DateOverride],
    length: timedelta,
) -> list[Slot]:
    """Every slot the rules offer on the local days first_day..last_day, before any filter."""
    slots: list[Slot] = []
    day = first_day
    while day <= last_day:
        for start, end in working_intervals(day, weekly, overrides):
            cursor = datetime.combine(day, start)
            limit = datetime.combine(day, end)
            while cursor + length <= limit:
                starts_at = local_to_utc(day, cursor.time(), zone)
                if starts_at is not None:
                    slots.append(Slot(starts_at, starts_at + length))
                cursor += length
        day += timedelta(days=1)
    return slots


def slot_at(
    starts_at: datetime,
    *,
    zone: ZoneInfo,
    weekly: Sequence[WeeklyInterval],
    overrides: Sequence[DateOverride],
    length: timedelta,
) -> Slot | None:
    """The slot `candidate_slots` lists starting at `starts_at` on its local day, or None,
    without listing the day (a booking checks one start; listing a whole day cost it more
    than its overlap check). Only one wall-clock time can become `starts_at`: its own in the
    zone, at its first occurrence (`local_to_utc` reads fold 0), on its grid."""
    local = starts_at.astimezone(zone)
    day, wall = local.date(), local.replace(tzinfo=None)
    for start, end in working_intervals(day, weekly, overrides):
        offset = wall - datetime.combine(day, start)
        if offset < timedelta(0) or offset % length or wall + length > datetime.combine(day, end):
            continue
        if local_to_utc(day, wall.time(), zone) == starts_at:
            return Slot(starts_at, starts_at + length)
    return None


def overlaps(start: datetime, end: datetime, busy: Iterable[tuple[datetime, datetime]]) -> bool:
    return any(start < busy_end and busy_start < end for busy_start, busy_end in busy)


def bookable_slots(
    *,
    zone: ZoneInfo,
    window_start: datetime,
    window_end: datetime,
    weekly: Sequence[WeeklyInterval],
    overrides: Sequence[DateOverride],
    policy: Policy,
    busy: Sequence[tuple[datetime, datetime]],
    now: datetime,
) -> list[Slot]:
    """Slots starting in [window_start, window_end) that a client may book at `now`.

    A slot is bookable when it starts after the notice, no later than the horizon, and its
    range widened by the buffers does not overlap a busy (already buffered) range.
    """
    earliest = max(window_start, now + policy.notice)
    latest = min(window_end, now + policy.horizon)
    if earliest >= latest:
        return []
    # Local days that can hold a slot starting in the window (a day either side covers zones
    # far from UTC).
    first_day = earliest.astimezone(zone).date() - timedelta(days=1)
    last_day = latest.astimezone(zone).date() + timedelta(days=1)
    slots = candidate_slots(
        zone=zone,
        first_day=first_day,
        last_day=last_day,
        weekly=weekly,
        overrides=overrides,
        length=policy.length,
    )
    return sorted(
        slot
        for slot in set(slots)
        if earliest <= slot.starts_at < latest
        and not overlaps(*slot.blocked_range(policy.buffer_before, policy.buffer_after), busy)
    )


def find_slot(
    slot_start: datetime,
    *,
    zone: ZoneInfo,
    weekly: Sequence[WeeklyInterval],
    overrides: Sequence[DateOverride],
    policy: Policy,
    busy: Sequence[tuple[datetime, datetime]],
    now: datetime,
) -> Slot | None:
    """The bookable slot starting exactly at `slot_start`, or None."""
    candidates = bookable_slots(
        zone=zone,
        window_start=slot_start,
        window_end=slot_start + timedelta(seconds=1),
        weekly=weekly,
        overrides=overrides,
        policy=policy,
        busy=busy,
        now=now,
    )
    return next((slot for slot in candidates if slot.starts_at == slot_start), None)
