"""Metering is interval arithmetic; a brute-force count of seconds is the reference."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from hypothesis import given
from hypothesis import strategies as st

from billing.models import Settlement
from billing.pricing import call_charge
from rooms import services
from rooms.metering import (
    SECOND,
    billable_time,
    intersect,
    to_micros,
    total,
    union,
    whole_seconds,
)
from rooms.models import MediaLink, Presence, Pricing, Room, RoomEvent, Seat
from rooms.tests.factories import OfferingFactory, expert_create, seat_booked, weekdays_available

seconds = st.integers(min_value=0, max_value=600)
intervals = st.lists(
    st.tuples(seconds, seconds).map(lambda pair: (min(pair), max(pair))), max_size=8
)


def _brute(*sets: list[tuple[int, int]]) -> int:
    covered = [
        {second for start, end in one_set for second in range(start, end)} for one_set in sets
    ]
    return len(set.intersection(*covered))


windows = st.tuples(seconds, seconds).map(lambda pair: (min(pair), max(pair)))


@given(window=windows, booked=windows, expert=intervals, client=intervals, media=intervals)
def test_billable_seconds_equal_a_second_by_second_count(
    window: tuple[int, int],
    booked: tuple[int, int],
    expert: list[tuple[int, int]],
    client: list[tuple[int, int]],
    media: list[tuple[int, int]],
) -> None:
    got = billable_time(
        live_window=window,
        booked=booked,
        expert_presence=expert,
        client_presence=client,
        media_links=media,
    )
    assert got == _brute([window], [booked], expert, client, media)


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
        booked=(0, 600),
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
        live_window=whole[0],
        booked=whole[0],
        expert_presence=whole,
        client_presence=presence,
        media_links=whole,
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
    # and so be longer than the booked length (its early minutes are not billed).
    start = dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC)
    room = Room(
        pricing=pricing,
        price_minor=price_minor,
        starts_at=start,
        ends_at=start + dt.timedelta(minutes=minutes),
    )
    stretch = [(a * 30, b * 30) for a, b in expert]
    # The booked time in the intervals' unit (seconds), starting 10 minutes into them: the
    # lobby's early minutes come first.
    booked = (600, 600 + minutes * 60)
    seconds_billed = billable_time(
        live_window=window,
        booked=booked,
        expert_presence=stretch,
        client_presence=client,
        media_links=media,
    )
    charge = call_charge(
        pricing=pricing,
        price_minor=price_minor,
        cap_minor=room.max_amount_minor,
        connected_seconds=seconds_billed,
        billable_seconds=seconds_billed,
        outcome=outcome,
        no_show_fee_percent=no_show_fee_percent,
    )
    assert 0 <= charge.amount_minor <= room.max_amount_minor


# --- the early minutes are free ---------------------------------------------------------------
# A room goes live once the expert and a client are both in the lobby, up to 10 minutes before
# the booked start; the meter starts at the start and the call ends at the booked end, so the
# client gets exactly the minutes they booked and pays nothing for the time before them.

START = dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC)


def _from_start(seconds: float) -> dt.datetime:
    return START + dt.timedelta(seconds=seconds)


def _span(first: float, last: float) -> tuple[int, int]:
    """Seconds relative to the booked start, as the meter's microseconds."""
    return to_micros(_from_start(first), _from_start(last))


def _billed_seconds(live: tuple[float, float], together: tuple[float, float], minutes: int) -> int:
    """Both present and connected over `together`, in a room live over `live`, booked for
    `minutes` from START."""
    span = _span(*together)
    return whole_seconds(
        billable_time(
            live_window=_span(*live),
            booked=_span(0, minutes * 60),
            expert_presence=[span],
            client_presence=[span],
            media_links=[span],
        )
    )


def test_a_call_live_from_six_minutes_early_to_the_end_bills_exactly_the_booked_length() -> None:
    assert _billed_seconds(live=(-360, 900), together=(-360, 900), minutes=15) == 900


def test_thirty_seconds_before_the_start_and_fifty_after_is_free_per_minute() -> None:
    billed = _billed_seconds(live=(-30, 50), together=(-30, 50), minutes=15)
    assert billed == 50
    charge = call_charge(pricing="per_minute", price_minor=100, cap_minor=1500,
                         connected_seconds=billed, billable_seconds=billed)  # fmt: skip
    assert (charge.rule, charge.amount_minor) == ("under_a_minute", 0)


def test_a_fixed_price_is_reached_only_sixty_seconds_after_the_start() -> None:
    def fixed(billed: int) -> int:
        return call_charge(
            pricing="fixed",
            price_minor=12000,
            cap_minor=12000,
            connected_seconds=billed,
            billable_seconds=billed,
        ).amount_minor

    # Two minutes together, most of them before the start: still under a paid minute.
    assert fixed(_billed_seconds(live=(-90, 59), together=(-90, 59), minutes=60)) == 0
    assert fixed(_billed_seconds(live=(-90, 60), together=(-90, 60), minutes=60)) == 12000


def test_nothing_is_billed_past_the_booked_end_even_if_the_window_ran_on() -> None:
    assert _billed_seconds(live=(-60, 1000), together=(-60, 1000), minutes=15) == 900


@given(window=windows, start=seconds, minutes=st.integers(min_value=1, max_value=10),
       expert=intervals, client=intervals, media=intervals)  # fmt: skip
def test_no_call_bills_more_than_its_booked_length(
    window: tuple[int, int],
    start: int,
    minutes: int,
    expert: list[tuple[int, int]],
    client: list[tuple[int, int]],
    media: list[tuple[int, int]],
) -> None:
    booked = (start, start + minutes * 60)
    got = billable_time(
        live_window=window,
        booked=booked,
        expert_presence=expert,
        client_presence=client,
        media_links=media,
    )
    assert got <= minutes * 60
    # Nothing before the start counts, whatever the live window says.
    early = billable_time(
        live_window=window,
        booked=booked,
        expert_presence=[(a, min(b, start)) for a, b in expert],
        client_presence=client,
        media_links=media,
    )
    assert early == 0


# --- the same rule at the room's close (rooms/services/room_state.py: seat_meter) -------------


def _seat(*, pricing: str, price_minor: int, minutes: int) -> Seat:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(
        expert=expert, pricing=pricing, price_minor=price_minor, length_minutes=minutes
    )
    seat = seat_booked(offering)
    assert Room.objects.get(pk=seat.room_id).starts_at == START
    return seat


def _call(seat: Seat, *, both_in: float, until: float) -> None:
    """The lobby opens; the expert and the client are in, with media, from `both_in` seconds
    after the start (negative: before it) to `until`; the room went live when both were in."""
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(_from_start(-600), tick=False):
        services.rooms_advance()
    for user in (room.expert, seat.client):
        Presence.objects.create(
            room=room, user=user, connection_id=f"c{user.pk}", opened_at=_from_start(both_in),
            last_heartbeat_at=_from_start(until), closed_at=_from_start(until),
        )  # fmt: skip
    assert services.room_mark_live(room.pk, at=_from_start(both_in))
    MediaLink.objects.create(
        room=room, client=seat.client, reported_by=seat.client,
        started_at=_from_start(both_in), ended_at=_from_start(until),
    )  # fmt: skip


def _settled(seat: Seat) -> Settlement:
    assert seat.payment_id is not None
    return Settlement.objects.get(payment_id=seat.payment_id)


@pytest.mark.django_db
def test_a_room_live_six_minutes_early_closes_at_its_end_and_bills_the_booked_minutes() -> None:
    seat = _seat(pricing=Pricing.PER_MINUTE, price_minor=100, minutes=15)
    _call(seat, both_in=-360, until=900)
    with time_machine.travel(_from_start(900), tick=False):
        assert services.rooms_advance()["closed"] == 1
    room = Room.objects.get(pk=seat.room_id)
    assert (room.close_reason, room.closed_at) == ("time_limit", _from_start(900))
    assert room.live_at == _from_start(-360)
    settlement = _settled(seat)
    assert settlement.inputs["billable_seconds"] == 900
    assert (settlement.rule, settlement.amount_minor) == ("per_minute", 1500)
    closed = RoomEvent.objects.get(room=room, kind="closed")
    metered = closed.data["seats"][0]
    # The story keeps both: when the room was live, and the booked time it was metered in.
    assert metered["live_window"] == [[_from_start(-360).timestamp(), _from_start(900).timestamp()]]
    assert metered["booked"] == [[START.timestamp(), _from_start(900).timestamp()]]


@pytest.mark.django_db
def test_an_early_call_ended_five_minutes_after_the_start_pays_five_minutes() -> None:
    seat = _seat(pricing=Pricing.PER_MINUTE, price_minor=100, minutes=15)
    _call(seat, both_in=-360, until=300)
    room = services.room_close(seat.room_id, reason="ended_by_expert", now=_from_start(300))
    assert room.closed_at == _from_start(300)
    settlement = _settled(seat)
    assert settlement.inputs["billable_seconds"] == 300
    assert settlement.amount_minor == 500


@pytest.mark.django_db
def test_a_call_of_half_a_minute_before_the_start_and_fifty_seconds_after_costs_one_minute() -> (
    None
):
    """80 s connected is a call (the free minute counts the early seconds); only the 50 s in
    the booked time are priced: one started minute."""
    seat = _seat(pricing=Pricing.PER_MINUTE, price_minor=100, minutes=15)
    _call(seat, both_in=-30, until=50)
    services.room_close(seat.room_id, reason="ended_by_expert", now=_from_start(50))
    settlement = _settled(seat)
    assert settlement.inputs["billable_seconds"] == 50
    assert settlement.inputs["connected_seconds"] == 80
    assert (settlement.rule, settlement.amount_minor) == ("per_minute", 100)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("both_in", "until", "charged"), [(0, 59, 0), (0, 60, 12000), (-120, 1, 12000)]
)
def test_a_fixed_price_session_is_charged_once_a_minute_connected_early_minutes_included(
    both_in: int, until: int, charged: int
) -> None:
    seat = _seat(pricing=Pricing.FIXED, price_minor=12000, minutes=60)
    _call(seat, both_in=both_in, until=until)
    services.room_close(seat.room_id, reason="ended_by_expert", now=_from_start(until))
    settlement = _settled(seat)
    assert settlement.inputs["billable_seconds"] == until
    assert settlement.inputs["connected_seconds"] == until - both_in
    assert settlement.amount_minor == charged
