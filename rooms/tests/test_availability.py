"""Properties of the pure slot functions in rooms/availability.py, DST nights included.

The oracles here are written independently of the product code: working time is a set of
covered minutes of the local day, and whether a local wall-clock time exists (and which of its
occurrences comes first) is found by trying the zone's offsets from the day before and the day
after and keeping the UTC instants that read back as that wall-clock time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, Phase, event, given, seed, settings
from hypothesis import strategies as st

from rooms.availability import (
    DateOverride,
    Policy,
    Slot,
    WeeklyInterval,
    bookable_slots,
    candidate_slots,
    find_slot,
    local_to_utc,
    overlaps,
    slot_at,
    working_intervals,
)

# Bounded runs: the whole module stays well under 30 s on two cores. The autouse cache fixture
# of conftest.py is function-scoped; it does not touch anything these pure functions read.
BOUNDED = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
SYDNEY = "Australia/Sydney"
ZONE_NAMES = (BERLIN, NEW_YORK, SYDNEY)

# Clocks go forward on these local dates (an hour of wall-clock time does not exist) ...
SPRING_FORWARD: dict[str, tuple[date, ...]] = {
    BERLIN: (date(2026, 3, 29), date(2027, 3, 28)),
    NEW_YORK: (date(2026, 3, 8), date(2027, 3, 14)),
    SYDNEY: (date(2026, 10, 4), date(2027, 10, 3)),
}
# ... and back on these (an hour of wall-clock time happens twice).
FALL_BACK: dict[str, tuple[date, ...]] = {
    BERLIN: (date(2026, 10, 25), date(2027, 10, 31)),
    NEW_YORK: (date(2026, 11, 1), date(2027, 11, 7)),
    SYDNEY: (date(2026, 4, 5), date(2027, 4, 4)),
}
# The skipped hour (spring) and the repeated hour (autumn) start at this local hour.
GAP_HOUR = {BERLIN: 2, NEW_YORK: 2, SYDNEY: 2}
REPEATED_HOUR = {BERLIN: 2, NEW_YORK: 1, SYDNEY: 2}

TRANSITIONS = [(name, day) for name in ZONE_NAMES for day in SPRING_FORWARD[name] + FALL_BACK[name]]


def zone_of(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def minutes(count: int) -> timedelta:
    return timedelta(minutes=count)


def clock(minute_of_day: int) -> time:
    return time(minute_of_day // 60, minute_of_day % 60)


def minute_of(at: time) -> int:
    return at.hour * 60 + at.minute


def every_day(start: time, end: time) -> list[WeeklyInterval]:
    return [WeeklyInterval(weekday, start, end) for weekday in range(7)]


def local_midnight_utc(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def utc(month: int, day: int, hour: int, minute: int) -> datetime:
    """An instant of 2026 in UTC."""
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def offset_on(naive: datetime, zone: ZoneInfo) -> timedelta:
    offset = naive.replace(tzinfo=zone).utcoffset()
    assert offset is not None
    return offset


# --- independent oracles ---------------------------------------------------------------------


def instants_of(naive: datetime, zone: ZoneInfo) -> list[datetime]:
    """Every UTC instant whose wall-clock time in `zone` is `naive`, earliest first.

    Empty for a time skipped by the clocks going forward; two for a time repeated when they go
    back. Only the offsets in force a day before and a day after are tried, which is enough
    for zones with at most one change a day.
    """
    offsets = {
        offset_on(naive - timedelta(days=1), zone),
        offset_on(naive + timedelta(days=1), zone),
    }
    candidates = sorted(naive.replace(tzinfo=UTC) - offset for offset in offsets)
    return [
        instant for instant in candidates if instant.astimezone(zone).replace(tzinfo=None) == naive
    ]


def covered_minutes(
    day: date, weekly: Sequence[WeeklyInterval], overrides: Sequence[DateOverride]
) -> set[int]:
    """Minutes of the local day that are working time: weekly rules unless a day off, plus
    extra hours."""
    todays = [override for override in overrides if override.day == day]
    spans: list[tuple[time, time]] = []
    if not any(override.day_off for override in todays):
        spans += [(rule.start, rule.end) for rule in weekly if rule.weekday == day.weekday()]
    spans += [
        (override.start, override.end)
        for override in todays
        if not override.day_off and override.start is not None and override.end is not None
    ]
    return {m for start, end in spans for m in range(minute_of(start), minute_of(end))}


def runs_of(covered: set[int]) -> list[tuple[int, int]]:
    """Maximal runs [first, end) of consecutive covered minutes."""
    runs: list[tuple[int, int]] = []
    for m in sorted(covered):
        if runs and runs[-1][1] == m:
            runs[-1] = (runs[-1][0], m + 1)
        else:
            runs.append((m, m + 1))
    return runs


def expected_starts(
    first_day: date,
    last_day: date,
    zone: ZoneInfo,
    weekly: Sequence[WeeklyInterval],
    overrides: Sequence[DateOverride],
    length: timedelta,
) -> list[datetime]:
    """The UTC starts the documented rules call for on local days first_day..last_day."""
    step = int(length.total_seconds()) // 60
    starts: list[datetime] = []
    day = first_day
    while day <= last_day:
        for first, end in runs_of(covered_minutes(day, weekly, overrides)):
            for m in range(first, end - step + 1, step):
                instants = instants_of(datetime.combine(day, clock(m)), zone)
                if instants:
                    starts.append(instants[0])
        day += timedelta(days=1)
    return sorted(starts)


# --- strategies ------------------------------------------------------------------------------

zone_names = st.sampled_from(ZONE_NAMES)
lengths = st.integers(min_value=15, max_value=180).map(minutes)
any_dates = st.dates(min_value=date(2026, 1, 1), max_value=date(2027, 12, 31))


@st.composite
def dates_near_transitions(draw: st.DrawFn, name: str) -> date:
    """A date a few days around one of the zone's DST changes, or any date in 2026–2027."""
    transition = draw(st.sampled_from(SPRING_FORWARD[name] + FALL_BACK[name]))
    near = transition + timedelta(days=draw(st.integers(min_value=-2, max_value=2)))
    return draw(st.one_of(st.just(near), st.just(transition), any_dates))


@st.composite
def local_spans(draw: st.DrawFn) -> tuple[time, time]:
    """A wall-clock interval on a five-minute grid, often over the small hours of DST nights."""
    night = draw(st.booleans())
    start = draw(st.integers(min_value=0, max_value=(48 if night else 286))) * 5
    end_max = min(start + 600, 287 * 5) if night else 287 * 5
    end = draw(st.integers(min_value=start // 5 + 1, max_value=end_max // 5)) * 5
    return clock(start), clock(end)


@st.composite
def weekly_rules(draw: st.DrawFn, min_size: int = 0) -> list[WeeklyInterval]:
    spans = draw(st.lists(local_spans(), min_size=min_size, max_size=4))
    rules: list[WeeklyInterval] = []
    for start, end in spans:
        weekdays = draw(
            st.one_of(
                st.just(frozenset(range(7))),
                st.frozensets(st.integers(min_value=0, max_value=6), min_size=1),
            )
        )
        rules += [WeeklyInterval(weekday, start, end) for weekday in sorted(weekdays)]
    return rules


@st.composite
def date_overrides(draw: st.DrawFn, first: date, days: int) -> list[DateOverride]:
    overrides: list[DateOverride] = []
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        day = first + timedelta(days=draw(st.integers(min_value=0, max_value=days - 1)))
        if draw(st.booleans()):
            overrides.append(DateOverride(day, day_off=True))
        else:
            start, end = draw(local_spans())
            overrides.append(DateOverride(day, day_off=False, start=start, end=end))
    return overrides


@dataclass(frozen=True)
class Scenario:
    zone: ZoneInfo
    window_start: datetime
    window_end: datetime
    weekly: list[WeeklyInterval]
    overrides: list[DateOverride]
    policy: Policy
    busy: list[tuple[datetime, datetime]]
    now: datetime

    def slots(self) -> list[Slot]:
        return bookable_slots(
            zone=self.zone,
            window_start=self.window_start,
            window_end=self.window_end,
            weekly=self.weekly,
            overrides=self.overrides,
            policy=self.policy,
            busy=self.busy,
            now=self.now,
        )

    def earliest(self) -> datetime:
        return max(self.window_start, self.now + self.policy.notice)

    def latest(self) -> datetime:
        return min(self.window_end, self.now + self.policy.horizon)

    def local_days(self) -> tuple[date, date]:
        """The expert's local days the window touches, a day either side."""
        return (
            self.window_start.astimezone(self.zone).date() - timedelta(days=1),
            self.window_end.astimezone(self.zone).date() + timedelta(days=1),
        )

    def rule_slots(self) -> list[Slot]:
        """Every slot the rules offer on the window's local days, before any filter."""
        first_day, last_day = self.local_days()
        return candidate_slots(
            zone=self.zone,
            first_day=first_day,
            last_day=last_day,
            weekly=self.weekly,
            overrides=self.overrides,
            length=self.policy.length,
        )


LAST_GRID_MINUTE = 287 * 5  # 23:55, the last five-minute mark of a day
NEAR_MISS = minutes(5)


def whole_minutes(delta: timedelta) -> int:
    return int(delta.total_seconds()) // 60


def up_to_grid(minute_of_day: int) -> int:
    return -(-minute_of_day // 5) * 5


@st.composite
def working_spans(draw: st.DrawFn, length: timedelta) -> tuple[time, time]:
    """A wall-clock interval on a five-minute grid that holds one to eight slots of `length`;
    half of them start in the small hours, where the DST changes happen."""
    step = whole_minutes(length)
    latest_start = LAST_GRID_MINUTE - step
    night = draw(st.booleans())
    start = draw(st.integers(0, min(latest_start, 4 * 60 if night else latest_start) // 5)) * 5
    end = start + step * draw(st.integers(1, 8)) + draw(st.integers(0, step - 1))
    # start + step <= 23:55, so rounding up to the grid and capping keeps at least one slot.
    return clock(start), clock(min(up_to_grid(end), LAST_GRID_MINUTE))


@st.composite
def working_weeks(draw: st.DrawFn, length: timedelta) -> list[WeeklyInterval]:
    """One to three working intervals, each every day or on three or more weekdays."""
    rules: list[WeeklyInterval] = []
    for start, end in draw(st.lists(working_spans(length), min_size=1, max_size=3)):
        weekdays = draw(
            st.one_of(
                st.just(frozenset(range(7))),
                st.frozensets(st.integers(min_value=0, max_value=6), min_size=3),
            )
        )
        rules += [WeeklyInterval(weekday, start, end) for weekday in sorted(weekdays)]
    return rules


@st.composite
def busy_near(
    draw: st.DrawFn, slot: Slot, buffer_before: timedelta, buffer_after: timedelta
) -> tuple[datetime, datetime]:
    """A busy range ending or starting within a few minutes of the slot's buffered range (on
    either side of the edge, touching it included), or lying across the slot itself."""
    blocked_from, blocked_until = slot.blocked_range(buffer_before, buffer_after)
    nudge = minutes(draw(st.integers(-3, 3)))
    duration = minutes(draw(st.integers(1, 240)))
    where = draw(st.sampled_from(("ends at its start", "starts at its end", "across it")))
    if where == "ends at its start":
        return blocked_from + nudge - duration, blocked_from + nudge
    if where == "starts at its end":
        return blocked_until + nudge, blocked_until + nudge + duration
    length = whole_minutes(slot.ends_at - slot.starts_at)
    start = slot.starts_at + minutes(draw(st.integers(-length, length)))
    return start, start + duration


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    """An expert's rules, a policy, booked (already buffered) ranges, a window and a now.

    Most scenarios leave room for slots: rules that fit the slot length, a window of one to
    seven days, a horizon past the notice. One in eight draws every part freely (no rules, a
    horizon shorter than the notice, an empty window …), so the edge cases stay. Busy ranges
    are mostly put on the edges of slots the rules offer, a few minutes either way, so the
    buffer and overlap checks both remove and keep slots.
    """
    name = draw(zone_names)
    day = draw(dates_near_transitions(name))
    now = datetime.combine(day, time(0), tzinfo=UTC) + minutes(draw(st.integers(0, 1439)))
    length = draw(lengths)
    buffer_before = minutes(draw(st.integers(0, 120)))
    buffer_after = minutes(draw(st.integers(0, 120)))
    if draw(st.sampled_from((False,) * 7 + (True,))):  # one in eight: anything goes
        window_start = now + minutes(draw(st.integers(-3 * 1440, 4 * 1440)))
        window_end = window_start + minutes(draw(st.integers(0, 7 * 1440)))
        notice = minutes(draw(st.integers(0, 3 * 1440)))
        horizon = minutes(draw(st.integers(0, 12 * 1440)))
        weekly = draw(weekly_rules())
    else:
        # The window and the horizon both reach a day or more past the earliest start the
        # window and the notice allow; either may end first.
        window_start = now + minutes(draw(st.integers(-1440, 3 * 1440)))
        notice = minutes(draw(st.integers(0, 2 * 1440)))
        earliest = max(window_start, now + notice)
        window_end = earliest + minutes(draw(st.integers(1440, 7 * 1440)))
        horizon = earliest - now + minutes(draw(st.integers(1440, 8 * 1440)))
        weekly = draw(working_weeks(length))
    scenario = Scenario(
        zone=zone_of(name),
        window_start=window_start,
        window_end=window_end,
        weekly=weekly,
        overrides=draw(date_overrides(day - timedelta(days=2), 12)),
        policy=Policy(length, notice, horizon, buffer_before, buffer_after),
        busy=[],
        now=now,
    )
    # Busy ranges on the edges of slots the rules offer, preferably of slots the window, the
    # notice and the horizon let through.
    offered = scenario.rule_slots()
    targets = [
        slot for slot in offered if scenario.earliest() <= slot.starts_at < scenario.latest()
    ] or offered
    # At most one for every two of them, so that a few slots usually survive.
    most = min(4, len(targets) // 2 + 1)
    near = st.lists(st.sampled_from(targets), min_size=1, max_size=most) if targets else st.just([])
    busy = [draw(busy_near(slot, buffer_before, buffer_after)) for slot in draw(near)]
    span = whole_minutes(window_end - window_start)
    busy += [
        (start, start + minutes(draw(st.integers(1, 600))))
        for start in (
            window_start + minutes(offset)
            for offset in draw(st.lists(st.integers(-600, span + 600), max_size=2))
        )
    ]
    return replace(scenario, busy=busy)


def coverage(scenario: Scenario) -> list[str]:
    """What a scenario exercises, for hypothesis.event and the share checks below."""
    slots = scenario.slots()
    labels = ["slots offered" if slots else "no slot offered"]
    if len(replace(scenario, busy=[]).slots()) > len(slots):
        labels.append("a busy range removed a slot")

    def near_miss(slot: Slot) -> bool:
        policy = scenario.policy
        blocked_from, blocked_until = slot.blocked_range(policy.buffer_before, policy.buffer_after)
        return any(
            timedelta(0) <= max(busy_from - blocked_until, blocked_from - busy_until) <= NEAR_MISS
            for busy_from, busy_until in scenario.busy
        )

    if any(near_miss(slot) for slot in slots):
        labels.append("a slot kept with a busy range within 5 minutes of its buffers")
    first_day, last_day = scenario.local_days()
    changes = SPRING_FORWARD[scenario.zone.key] + FALL_BACK[scenario.zone.key]
    if any(first_day <= change <= last_day for change in changes):
        labels.append("window near a DST change")
    return labels


def note_coverage(scenario: Scenario) -> None:
    for label in coverage(scenario):
        event(label)


@dataclass(frozen=True)
class DstCase:
    """Whole local days around a DST change, nothing in the way: no notice, no busy ranges."""

    zone: ZoneInfo
    first_day: date
    last_day: date
    weekly: list[WeeklyInterval]
    overrides: list[DateOverride]
    length: timedelta

    def slots(self) -> list[Slot]:
        window_start = local_midnight_utc(self.first_day, self.zone)
        return bookable_slots(
            zone=self.zone,
            window_start=window_start,
            window_end=local_midnight_utc(self.last_day + timedelta(days=1), self.zone),
            weekly=self.weekly,
            overrides=self.overrides,
            policy=Policy(self.length, timedelta(0), timedelta(days=3650), *(timedelta(0),) * 2),
            busy=[],
            now=window_start - timedelta(days=1),
        )


@st.composite
def dst_cases(draw: st.DrawFn) -> DstCase:
    name = draw(zone_names)
    day = draw(dates_near_transitions(name))
    return DstCase(
        zone=zone_of(name),
        first_day=day - timedelta(days=1),
        last_day=day + timedelta(days=1),
        weekly=draw(weekly_rules(min_size=1)),
        overrides=draw(date_overrides(day - timedelta(days=1), 3)),
        length=draw(lengths),
    )


def offered(
    name: str,
    day: date,
    weekly: Sequence[WeeklyInterval],
    length_minutes: int,
    *,
    days: int = 1,
    overrides: Sequence[DateOverride] = (),
) -> list[Slot]:
    """The bookable slots of whole local days, with nothing else in the way."""
    zone = zone_of(name)
    return DstCase(
        zone,
        day,
        day + timedelta(days=days - 1),
        list(weekly),
        list(overrides),
        minutes(length_minutes),
    ).slots()


def local_clock(slots: Sequence[Slot], name: str) -> list[str]:
    return [slot.starts_at.astimezone(zone_of(name)).strftime("%H:%M") for slot in slots]


def utc_starts(slots: Sequence[Slot]) -> list[datetime]:
    return [slot.starts_at for slot in slots]


# --- the test data itself --------------------------------------------------------------------


@pytest.mark.parametrize(("name", "day"), TRANSITIONS)
def test_every_transition_date_listed_here_changes_the_utc_offset_that_day(
    name: str, day: date
) -> None:
    zone = zone_of(name)
    before = datetime.combine(day, time(0), tzinfo=zone).utcoffset()
    after = datetime.combine(day, time(12), tzinfo=zone).utcoffset()
    assert before is not None and after is not None
    going_forward = day in SPRING_FORWARD[name]
    assert after - before == (timedelta(hours=1) if going_forward else timedelta(hours=-1))


# --- the scenarios reach the code they are meant to test -------------------------------------


def test_scenarios_mostly_offer_slots_and_put_busy_ranges_on_both_sides_of_them() -> None:
    # The properties over scenarios() say "for every slot …": they are only as good as the
    # share of scenarios that have slots, and of those whose busy ranges come close to them.
    # A fixed seed and no example database make this sample the same on every run; it fails
    # if the strategy drifts back to scenarios that offer nothing.
    seen: Counter[str] = Counter()

    @settings(max_examples=200, deadline=None, database=None, phases=[Phase.generate])
    @seed(20260329)
    @given(scenarios())
    def sample(scenario: Scenario) -> None:
        seen["examples"] += 1
        seen.update(coverage(scenario))

    sample()
    share = {label: count / seen["examples"] for label, count in seen.items()}
    assert seen["examples"] == 200
    assert share.get("slots offered", 0) > 0.6, share
    assert share.get("a busy range removed a slot", 0) > 0.3, share
    assert share.get("a slot kept with a busy range within 5 minutes of its buffers", 0) > 0.3, (
        share
    )
    assert share.get("window near a DST change", 0) > 0.25, share
    # ... and the edge cases are still drawn: some scenarios offer nothing at all.
    assert share.get("no slot offered", 0) > 0.03, share


# --- busy ranges, buffers, notice, horizon, window -------------------------------------------


@BOUNDED
@given(scenarios())
def test_no_bookable_slot_widened_by_its_buffers_overlaps_a_busy_range(
    scenario: Scenario,
) -> None:
    note_coverage(scenario)
    policy = scenario.policy
    for slot in scenario.slots():
        blocked_from = slot.starts_at - policy.buffer_before
        blocked_until = slot.ends_at + policy.buffer_after
        for busy_from, busy_until in scenario.busy:
            assert blocked_until <= busy_from or busy_until <= blocked_from, (
                slot,
                (busy_from, busy_until),
            )


@BOUNDED
@given(scenarios())
def test_every_slot_starts_after_the_notice_within_the_horizon_and_inside_the_window(
    scenario: Scenario,
) -> None:
    note_coverage(scenario)
    for slot in scenario.slots():
        assert slot.starts_at >= scenario.now + scenario.policy.notice
        assert slot.starts_at <= scenario.now + scenario.policy.horizon
        assert scenario.window_start <= slot.starts_at < scenario.window_end


@BOUNDED
@given(scenarios())
def test_slots_are_aware_utc_sorted_distinct_and_last_their_length(scenario: Scenario) -> None:
    slots = scenario.slots()
    assert all(earlier.starts_at < later.starts_at for earlier, later in pairwise(slots))
    for slot in slots:
        assert slot.starts_at.utcoffset() == timedelta(0)
        assert slot.ends_at - slot.starts_at == scenario.policy.length


@BOUNDED
@given(scenarios())
def test_bookable_slots_are_exactly_the_rule_slots_that_pass_window_notice_horizon_and_busy(
    scenario: Scenario,
) -> None:
    # The filters must not drop more than they should: a slot missing here is lost business.
    earliest = max(scenario.window_start, scenario.now + scenario.policy.notice)
    latest = min(scenario.window_end, scenario.now + scenario.policy.horizon)
    policy = scenario.policy
    expected = [
        start
        for start in expected_starts(
            scenario.window_start.astimezone(scenario.zone).date() - timedelta(days=1),
            scenario.window_end.astimezone(scenario.zone).date() + timedelta(days=1),
            scenario.zone,
            scenario.weekly,
            scenario.overrides,
            policy.length,
        )
        if earliest <= start < latest
        and all(
            start + policy.length + policy.buffer_after <= busy_from
            or busy_until <= start - policy.buffer_before
            for busy_from, busy_until in scenario.busy
        )
    ]
    assert utc_starts(scenario.slots()) == expected


@BOUNDED
@given(scenarios(), st.data())
def test_find_slot_finds_each_bookable_slot_and_nothing_a_minute_off_the_grid(
    scenario: Scenario, data: st.DataObject
) -> None:
    slots = scenario.slots()
    event("slots offered" if slots else "no slot offered")
    if not slots:
        return
    slot = data.draw(st.sampled_from(slots))

    def found(start: datetime) -> Slot | None:
        return find_slot(
            start,
            zone=scenario.zone,
            weekly=scenario.weekly,
            overrides=scenario.overrides,
            policy=scenario.policy,
            busy=scenario.busy,
            now=scenario.now,
        )

    assert found(slot.starts_at) == slot
    for off_grid in (slot.starts_at - minutes(1), slot.starts_at + minutes(1)):
        if is_a_rule_start(off_grid, scenario):
            # Only across a spring-forward gap (see the grid check test below).
            event("a rule slot one minute away, across a spring-forward gap")
            assert found(off_grid) in (None, *(s for s in slots if s.starts_at == off_grid))
        else:
            assert found(off_grid) is None


def booking_grid(
    slot_start: datetime,
    zone: ZoneInfo,
    weekly: Sequence[WeeklyInterval],
    overrides: Sequence[DateOverride],
    length: timedelta,
) -> list[Slot]:
    """The slots rooms.services.booking.slot_check_policy looks `slot_start` up in: the candidate
    slots of the expert's local day of `slot_start` and a day either side, with the overrides of
    those days only (selectors.date_overrides reads a date range)."""
    local_day = slot_start.astimezone(zone).date()
    first_day, last_day = local_day - timedelta(days=1), local_day + timedelta(days=1)
    return candidate_slots(
        zone=zone,
        first_day=first_day,
        last_day=last_day,
        weekly=weekly,
        overrides=[override for override in overrides if first_day <= override.day <= last_day],
        length=length,
    )


def is_a_rule_start(instant: datetime, scenario: Scenario) -> bool:
    """Whether the rules call for a slot starting at `instant`, by the independent oracle."""
    local_day = instant.astimezone(scenario.zone).date()
    return instant in expected_starts(
        local_day - timedelta(days=1),
        local_day + timedelta(days=1),
        scenario.zone,
        scenario.weekly,
        scenario.overrides,
        scenario.policy.length,
    )


@BOUNDED
@given(scenarios())
def test_every_bookable_slot_passes_the_booking_paths_grid_check_and_a_minute_off_does_not(
    scenario: Scenario,
) -> None:
    # A listed slot that booking_reserve refused as "outside the expert's availability" would
    # be a time the client can see and never book.
    note_coverage(scenario)
    grids: dict[date, list[Slot]] = {}

    def grid_around(slot_start: datetime) -> list[Slot]:
        local_day = slot_start.astimezone(scenario.zone).date()
        if local_day not in grids:
            grids[local_day] = booking_grid(
                slot_start,
                scenario.zone,
                scenario.weekly,
                scenario.overrides,
                scenario.policy.length,
            )
        return grids[local_day]

    for slot in scenario.slots():
        # The service compares starts; the slot it finds is the very one that was listed.
        assert [s for s in grid_around(slot.starts_at) if s.starts_at == slot.starts_at] == [slot]
        for off_grid in (slot.starts_at - minutes(1), slot.starts_at + minutes(1)):
            if not any(s.starts_at == off_grid for s in grid_around(off_grid)):
                continue
            # Without a clock change, two starts one minute apart lie in one merged working
            # interval, whose grid steps by the slot length (15 minutes or more); and a repeated
            # hour's second occurrence is never offered. So only a spring-forward gap can put
            # two slot starts one real minute apart: one just before the gap, one at its end.
            event("a rule slot one minute away, across a spring-forward gap")
            local = off_grid.astimezone(scenario.zone)
            assert local.date() in SPRING_FORWARD[scenario.zone.key], (slot, off_grid)
            assert is_a_rule_start(off_grid, scenario), (slot, off_grid)


@BOUNDED
@given(dst_cases(), st.data())
def test_slot_at_finds_exactly_the_slot_the_days_listing_holds(
    case: DstCase, data: st.DataObject
) -> None:
    """The booking path looks one start up with `slot_at` instead of listing its local day:
    both agree on every listed start, a minute and an hour either side of it, and any
    five-minute mark of the days around a DST change (a skipped or repeated hour's included)."""

    def by_listing(instant: datetime) -> Slot | None:
        day = instant.astimezone(case.zone).date()
        listed = candidate_slots(
            zone=case.zone,
            first_day=day,
            last_day=day,
            weekly=case.weekly,
            overrides=case.overrides,
            length=case.length,
        )
        return next((slot for slot in listed if slot.starts_at == instant), None)

    listed = candidate_slots(
        zone=case.zone,
        first_day=case.first_day,
        last_day=case.last_day,
        weekly=case.weekly,
        overrides=case.overrides,
        length=case.length,
    )
    event("slots offered" if listed else "no slot offered")
    # An hour off: the same wall-clock time's other occurrence, on a fall-back night.
    shifts = (0, -1, 1, -60, 60)
    instants = [slot.starts_at + minutes(shift) for slot in listed for shift in shifts]
    midnight = local_midnight_utc(case.first_day, case.zone)
    marks = data.draw(st.lists(st.integers(0, 3 * 24 * 12), max_size=20))
    instants += [midnight + minutes(5 * mark) for mark in marks]
    for instant in instants:
        found = slot_at(
            instant,
            zone=case.zone,
            weekly=case.weekly,
            overrides=case.overrides,
            length=case.length,
        )
        assert found == by_listing(instant), instant


def test_across_a_spring_forward_gap_two_slots_can_start_one_real_minute_apart() -> None:
    # Berlin 2026-03-29, 59-minute slots, hours 01:00–02:58 and 03:00–04:00: the grid of the
    # first gives 01:00 and 01:59 CET; the second starts at 03:00 CEST, one real minute after
    # 01:59 CET. Both are offered (and overlap in real time, as "a slot lasts its length in
    # real time" implies), and the booking path accepts both.
    zone = zone_of(BERLIN)
    weekly = every_day(time(1), time(2, 58)) + every_day(time(3), time(4))
    slots = offered(BERLIN, date(2026, 3, 29), weekly, 59)
    assert local_clock(slots, BERLIN) == ["01:00", "01:59", "03:00"]
    assert utc_starts(slots) == [utc(3, 29, 0, 0), utc(3, 29, 0, 59), utc(3, 29, 1, 0)]
    for slot in slots:
        assert slot in booking_grid(slot.starts_at, zone, weekly, [], minutes(59))


def test_a_busy_range_that_only_touches_a_buffered_slot_does_not_remove_it() -> None:
    # 10:00–11:00 UTC with 15 minutes before and after blocks 09:45–11:15; a room ending at
    # 09:45 or starting at 11:15 leaves it free, one a minute closer takes it.
    zone = zone_of("UTC")
    policy = Policy(minutes(60), timedelta(0), timedelta(days=60), minutes(15), minutes(15))
    start = datetime(2026, 6, 1, 10, 0, tzinfo=UTC)

    def free_with(busy: list[tuple[datetime, datetime]]) -> bool:
        found = find_slot(
            start,
            zone=zone,
            weekly=every_day(time(10), time(11)),
            overrides=[],
            policy=policy,
            busy=busy,
            now=start - timedelta(days=1),
        )
        return found is not None

    assert free_with([(start - minutes(75), start - minutes(15))])
    assert free_with([(start + minutes(75), start + minutes(135))])
    assert not free_with([(start - minutes(75), start - minutes(14))])
    assert not free_with([(start + minutes(74), start + minutes(135))])
    assert overlaps(start, start + minutes(1), [(start, start + minutes(1))])


def test_window_edges_are_read_in_the_experts_local_days_not_in_utc_days() -> None:
    # 01:00–03:00 UTC on 2 June is the evening of 1 June in New York; 18:00–21:00 UTC on 1 June
    # is the morning of 2 June in Sydney. Both windows hold slots of a local day whose date
    # differs from the UTC date.
    def slots(name: str, rule: tuple[time, time], start: datetime, end: datetime) -> list[Slot]:
        return bookable_slots(
            zone=zone_of(name),
            window_start=start,
            window_end=end,
            weekly=every_day(*rule),
            overrides=[],
            policy=Policy(minutes(60), timedelta(0), timedelta(days=60), *(timedelta(0),) * 2),
            busy=[],
            now=start - timedelta(days=1),
        )

    evening = slots(NEW_YORK, (time(20), time(23)), utc(6, 2, 1, 0), utc(6, 2, 3, 0))
    assert utc_starts(evening) == [utc(6, 2, 1, 0), utc(6, 2, 2, 0)]
    morning = slots(SYDNEY, (time(4), time(7)), utc(6, 1, 18, 0), utc(6, 1, 21, 0))
    assert utc_starts(morning) == [utc(6, 1, 18, 0), utc(6, 1, 19, 0), utc(6, 1, 20, 0)]


# --- wall-clock rules across DST -------------------------------------------------------------


@BOUNDED
@given(dst_cases())
def test_every_slot_starts_on_its_working_intervals_grid_in_local_wall_clock_time(
    case: DstCase,
) -> None:
    step = int(case.length.total_seconds()) // 60
    for slot in case.slots():
        local = slot.starts_at.astimezone(case.zone)
        day, start = local.date(), minute_of(local.time())
        assert local.second == 0
        assert local.fold == 0, "a repeated wall-clock time is offered at its first occurrence"
        covered = covered_minutes(day, case.weekly, case.overrides)
        # The slot lies inside one working interval of its local day on the wall clock ...
        assert set(range(start, start + step)) <= covered, (local, step)
        # ... and starts a whole number of lengths after that interval's start, which is the
        # start of a rule (or extra hours) of that day.
        interval_start = next(first for first, end in runs_of(covered) if first <= start < end)
        rule_starts = {
            minute_of(rule.start) for rule in case.weekly if rule.weekday == day.weekday()
        } | {minute_of(o.start) for o in case.overrides if o.day == day and o.start is not None}
        assert interval_start in rule_starts
        assert (start - interval_start) % step == 0, (local, step)


@BOUNDED
@given(dst_cases())
def test_across_dst_every_existing_grid_time_of_the_rules_is_offered(case: DstCase) -> None:
    expected = expected_starts(
        case.first_day, case.last_day, case.zone, case.weekly, case.overrides, case.length
    )
    assert utc_starts(case.slots()) == expected


@pytest.mark.parametrize(("name", "day"), TRANSITIONS)
def test_a_0900_rule_gives_0900_local_on_both_sides_of_the_transition(name: str, day: date) -> None:
    slots = offered(name, day - timedelta(days=1), every_day(time(9), time(10)), 60, days=3)
    assert local_clock(slots, name) == ["09:00", "09:00", "09:00"]
    before, _, after = (slot.starts_at.astimezone(zone_of(name)).utcoffset() for slot in slots)
    assert before != after, "the UTC time of a 09:00 rule moves with DST"


def test_berlin_0900_is_0800_utc_in_winter_and_0700_utc_in_summer() -> None:
    slots = offered(BERLIN, date(2026, 3, 28), every_day(time(9), time(10)), 60, days=2)
    assert utc_starts(slots) == [
        datetime(2026, 3, 28, 8, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 7, 0, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("name", "day", "expected_utc"),
    [
        # 02:00 and 02:30 do not exist that night; 03:00 is the first time after the gap.
        (BERLIN, date(2026, 3, 29), [utc(3, 29, 1, 0), utc(3, 29, 1, 30)]),
        (NEW_YORK, date(2026, 3, 8), [utc(3, 8, 7, 0), utc(3, 8, 7, 30)]),
        (SYDNEY, date(2026, 10, 4), [utc(10, 3, 16, 0), utc(10, 3, 16, 30)]),
    ],
)
def test_nonexistent_local_times_on_spring_forward_night_are_dropped(
    name: str, day: date, expected_utc: list[datetime]
) -> None:
    slots = offered(name, day, every_day(time(2), time(4)), 30)
    assert local_clock(slots, name) == ["03:00", "03:30"]
    assert utc_starts(slots) == expected_utc


@pytest.mark.parametrize(
    ("name", "day", "rule_start", "expected_utc"),
    [
        # Berlin 2026-10-25: 02:00–02:59 happens twice; 02:30 is offered at 00:30 UTC (CEST),
        # never again at 01:30 UTC (CET).
        (
            BERLIN,
            date(2026, 10, 25),
            time(2),
            [utc(10, 25, 0, 0), utc(10, 25, 0, 30), utc(10, 25, 2, 0), utc(10, 25, 2, 30)],
        ),
        (
            NEW_YORK,
            date(2026, 11, 1),
            time(1),
            [utc(11, 1, 5, 0), utc(11, 1, 5, 30), utc(11, 1, 7, 0), utc(11, 1, 7, 30)],
        ),
        (
            SYDNEY,
            date(2026, 4, 5),
            time(2),
            [utc(4, 4, 15, 0), utc(4, 4, 15, 30), utc(4, 4, 17, 0), utc(4, 4, 17, 30)],
        ),
    ],
)
def test_ambiguous_local_times_on_fall_back_night_are_offered_once_at_the_first_occurrence(
    name: str, day: date, rule_start: time, expected_utc: list[datetime]
) -> None:
    rule_end = time(rule_start.hour + 2)
    slots = offered(name, day, every_day(rule_start, rule_end), 30)
    first = f"{rule_start.hour:02d}"
    second = f"{rule_start.hour + 1:02d}"
    assert local_clock(slots, name) == [
        f"{first}:00",
        f"{first}:30",
        f"{second}:00",
        f"{second}:30",
    ]
    assert utc_starts(slots) == expected_utc


def test_a_slot_spanning_spring_forward_lasts_its_length_and_ends_an_hour_later_on_the_clock() -> (
    None
):
    # Berlin 2026-03-29, 01:00–03:00 in hours: 01:00 CET runs 60 real minutes, to 03:00 CEST;
    # 02:00 does not exist, so it is the only slot.
    slots = offered(BERLIN, date(2026, 3, 29), every_day(time(1), time(3)), 60)
    assert [(s.starts_at, s.ends_at) for s in slots] == [
        (datetime(2026, 3, 29, 0, 0, tzinfo=UTC), datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    ]
    assert slots[0].ends_at.astimezone(zone_of(BERLIN)).strftime("%H:%M") == "03:00"


def test_a_slot_spanning_fall_back_lasts_its_length_and_ends_an_hour_earlier_on_the_clock() -> None:
    # Berlin 2026-10-25, 01:00–03:00 in hours: 01:00 and 02:00 CEST (the first 02:00); the slot
    # at 02:00 CEST runs 60 real minutes and ends at 02:00 CET on the wall clock.
    slots = offered(BERLIN, date(2026, 10, 25), every_day(time(1), time(3)), 60)
    assert utc_starts(slots) == [
        datetime(2026, 10, 24, 23, 0, tzinfo=UTC),
        datetime(2026, 10, 25, 0, 0, tzinfo=UTC),
    ]
    assert slots[1].ends_at.astimezone(zone_of(BERLIN)).strftime("%H:%M") == "02:00"


# --- overrides and working intervals ---------------------------------------------------------


@BOUNDED
@given(st.data())
def test_a_day_off_override_removes_that_days_weekly_slots_and_no_other(
    data: st.DataObject,
) -> None:
    name = data.draw(zone_names)
    day = data.draw(dates_near_transitions(name))
    weekly = data.draw(weekly_rules(min_size=1))
    length = data.draw(st.integers(15, 180))
    before = offered(name, day - timedelta(days=1), weekly, length, days=3)
    after = offered(
        name, day - timedelta(days=1), weekly, length, days=3, overrides=[DateOverride(day, True)]
    )
    zone = zone_of(name)
    assert after == [slot for slot in before if slot.starts_at.astimezone(zone).date() != day]


@BOUNDED
@given(st.data())
def test_an_extra_hours_override_adds_its_slots_on_that_date_only(data: st.DataObject) -> None:
    name = data.draw(zone_names)
    day = data.draw(dates_near_transitions(name))
    # Weekly rules on other weekdays only, so the extra hours are that date's only hours.
    weekly = [r for r in data.draw(weekly_rules()) if r.weekday != day.weekday()]
    start, end = data.draw(local_spans())
    length = data.draw(st.integers(15, 180))
    extra = DateOverride(day, day_off=False, start=start, end=end)
    before = offered(name, day - timedelta(days=7), weekly, length, days=15)
    after = offered(name, day - timedelta(days=7), weekly, length, days=15, overrides=[extra])
    zone = zone_of(name)
    added = [slot for slot in after if slot.starts_at.astimezone(zone).date() == day]
    assert [slot for slot in after if slot not in added] == before
    assert utc_starts(added) == expected_starts(day, day, zone, [], [extra], minutes(length))


def test_extra_hours_on_a_day_without_rules_are_offered_in_the_experts_zone() -> None:
    # 2026-03-29 is a Sunday; the weekly rules cover Monday only.
    extra = DateOverride(date(2026, 3, 29), day_off=False, start=time(18), end=time(20))
    slots = offered(
        NEW_YORK,
        date(2026, 3, 28),
        [WeeklyInterval(0, time(9), time(17))],
        60,
        days=2,
        overrides=[extra],
    )
    assert utc_starts(slots) == [
        datetime(2026, 3, 29, 22, 0, tzinfo=UTC),
        datetime(2026, 3, 29, 23, 0, tzinfo=UTC),
    ]


@BOUNDED
@given(any_dates, weekly_rules(), st.data())
def test_working_intervals_are_sorted_merged_and_cover_exactly_the_working_minutes(
    day: date, weekly: list[WeeklyInterval], data: st.DataObject
) -> None:
    overrides = data.draw(date_overrides(day - timedelta(days=1), 3))
    intervals = working_intervals(day, weekly, overrides)
    assert all(start < end for start, end in intervals)
    # Overlapping or touching intervals become one, so consecutive ones leave a gap.
    assert all(earlier[1] < later[0] for earlier, later in pairwise(intervals))
    assert [(clock(first), clock(end)) for first, end in intervals_in_minutes(intervals)] == [
        (clock(first), clock(end))
        for first, end in runs_of(covered_minutes(day, weekly, overrides))
    ]


def intervals_in_minutes(intervals: Sequence[tuple[time, time]]) -> list[tuple[int, int]]:
    return [(minute_of(start), minute_of(end)) for start, end in intervals]


def test_working_intervals_merge_overlapping_and_touching_rules_and_keep_gaps() -> None:
    monday = date(2026, 6, 1)
    weekly = [
        WeeklyInterval(0, time(13), time(14)),
        WeeklyInterval(0, time(9), time(11)),
        WeeklyInterval(0, time(10), time(12)),
        WeeklyInterval(0, time(12), time(12, 30)),
        WeeklyInterval(1, time(6), time(7)),
    ]
    assert working_intervals(monday, weekly, []) == [
        (time(9), time(12, 30)),
        (time(13), time(14)),
    ]


# --- local_to_utc ----------------------------------------------------------------------------


@BOUNDED
@given(zone_names.flatmap(lambda name: st.tuples(st.just(name), dates_near_transitions(name))))
def test_local_to_utc_round_trips_every_existing_time_and_picks_its_first_occurrence(
    named_day: tuple[str, date],
) -> None:
    name, day = named_day
    zone = zone_of(name)
    for m in range(0, 24 * 60, 5):
        naive = datetime.combine(day, clock(m))
        instants = instants_of(naive, zone)
        result = local_to_utc(day, clock(m), zone)
        if instants:
            assert result is not None, naive
            assert result == instants[0]
            assert result.utcoffset() == timedelta(0)
            assert result.astimezone(zone).replace(tzinfo=None) == naive
        else:
            assert result is None, naive


@BOUNDED
@given(st.sampled_from(ZONE_NAMES), st.integers(0, 1), st.integers(0, 59))
def test_local_to_utc_returns_none_inside_the_spring_forward_gap(
    name: str, which: int, minute: int
) -> None:
    day = SPRING_FORWARD[name][which]
    assert local_to_utc(day, time(GAP_HOUR[name], minute), zone_of(name)) is None


@BOUNDED
@given(st.sampled_from(ZONE_NAMES), st.integers(0, 1), st.integers(0, 59))
def test_local_to_utc_maps_a_repeated_time_to_its_earlier_instant(
    name: str, which: int, minute: int
) -> None:
    day = FALL_BACK[name][which]
    zone = zone_of(name)
    result = local_to_utc(day, time(REPEATED_HOUR[name], minute), zone)
    assert result is not None
    later = result + timedelta(hours=1)
    assert result.astimezone(zone).replace(tzinfo=None) == later.astimezone(zone).replace(
        tzinfo=None
    )
    assert result.astimezone(zone).fold == 0 and later.astimezone(zone).fold == 1


def test_local_to_utc_names_the_dst_decisions() -> None:
    berlin = zone_of(BERLIN)
    # Spring forward: 02:30 does not exist in Berlin on 2026-03-29.
    assert local_to_utc(date(2026, 3, 29), time(2, 30), berlin) is None
    assert local_to_utc(date(2026, 3, 29), time(3), berlin) == datetime(
        2026, 3, 29, 1, 0, tzinfo=UTC
    )
    # Fall back: 02:30 happens twice on 2026-10-25; the first (CEST) is 00:30 UTC.
    assert local_to_utc(date(2026, 10, 25), time(2, 30), berlin) == datetime(
        2026, 10, 25, 0, 30, tzinfo=UTC
    )
