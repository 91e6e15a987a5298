"""Metering is interval arithmetic; a brute-force count of seconds is the reference."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import call_charge
from rooms.metering import (
    SECOND,
    billable_time,
    intersect,
    to_micros,
    total,
    union,
    whole_seconds,
)
from rooms.models import Room

seconds = st.integers(min_value=0, max_value=600)
intervals = st.lists(
    st.tuples(seconds, seconds).map(lambda pair: (min(pair), max(pair))), max_size=8
)


def _brute(*sets: list[tuple[int, int]]) -> int:
    covered = [
        {second for start, end in one_set for second in range(start, end)} for one_set in sets
    ]
    return len(set.intersection(*covered))


@given(
    window=st.tuples(seconds, seconds).map(lambda pair: (min(pair), max(pair))),
    expert=intervals,
    client=intervals,
    media=intervals,
)
def test_billable_seconds_equal_a_second_by_second_count(
    window: tuple[int, int],
    expert: list[tuple[int, int]],
    client: list[tuple[int, int]],
    media: list[tuple[int, int]],
) -> None:
    got = billable_time(
        live_window=window, expert_presence=expert, client_presence=client, media_links=media
    )
    assert got == _brute([window], expert, client, media)


@given(a=intervals, b=intervals)
def test_union_and_intersection_agree_with_sets(
    a: list[tuple[int, int]], b: list[tuple[int, int]]
) -> None:
    assert total(union(a + b)) == len(
        {s for x, y in a for s in range(x, y)} | {s for x, y in b for s in range(x, y)}
    )
    assert total(intersect(a, b)) == _brute(a, b)
    merged = union(a)
    assert all(left[1] < right[0] for left, right in zip(merged, merged[1:], strict=False))


def test_a_reconnect_gap_is_not_billed_and_overlapping_reports_are_not_billed_twice() -> None:
    # The client dropped from 300 to 320; two media reports overlap from 100 to 200.
    got = billable_time(
        live_window=(0, 600),
        expert_presence=[(0, 600)],
        client_presence=[(0, 300), (320, 600)],
        media_links=[(0, 200), (100, 300), (325, 600)],
    )
    assert got == 300 + 275


def _at(second: int, micro: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, 1, 10, 0, second, micro, tzinfo=dt.UTC)


def test_a_partial_second_is_never_billed() -> None:
    first, last = to_micros(_at(0, 400_000), _at(59, 900_000))
    assert last - first == 59 * SECOND + 500_000
    assert whole_seconds(last - first) == 59


def test_a_resume_in_the_middle_of_a_second_loses_no_second() -> None:
    # One presence closes and the next opens at 10.5 s (a reconnect that replaced the old one).
    presence = [to_micros(_at(0, 250_000), _at(10, 500_000)), to_micros(_at(10, 500_000), _at(21))]
    whole = [to_micros(_at(0, 250_000), _at(21))]
    got = billable_time(
        live_window=whole[0], expert_presence=whole, client_presence=presence, media_links=whole
    )
    assert whole_seconds(got) == 20


@given(
    pricing=st.sampled_from(["fixed", "per_minute"]),
    price_minor=st.integers(min_value=0, max_value=100_000),
    minutes=st.integers(min_value=15, max_value=180),
    outcome=st.sampled_from(["completed", "client_no_show", "expert_no_show"]),
    no_show_fee_percent=st.integers(min_value=0, max_value=100),
    window=st.tuples(seconds, seconds).map(lambda pair: (min(pair), max(pair) * 30)),
    expert=intervals,
    client=intervals,
    media=intervals,
)
def test_a_settlement_never_exceeds_the_hold(
    pricing: str,
    price_minor: int,
    minutes: int,
    outcome: str,
    no_show_fee_percent: int,
    window: tuple[int, int],
    expert: list[tuple[int, int]],
    client: list[tuple[int, int]],
    media: list[tuple[int, int]],
) -> None:
    # The hold is the room's maximum; the live window may open in the lobby, before the start,
    # and so be longer than the booked length.
    start = dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC)
    room = Room(
        pricing=pricing,
        price_minor=price_minor,
        starts_at=start,
        ends_at=start + dt.timedelta(minutes=minutes),
    )
    stretch = [(a * 30, b * 30) for a, b in expert]
    seconds_billed = billable_time(
        live_window=window, expert_presence=stretch, client_presence=client, media_links=media
    )
    charge = call_charge(
        pricing=pricing,
        price_minor=price_minor,
        cap_minor=room.max_amount_minor,
        billable_seconds=seconds_billed,
        outcome=outcome,
        no_show_fee_percent=no_show_fee_percent,
    )
    assert 0 <= charge.amount_minor <= room.max_amount_minor
