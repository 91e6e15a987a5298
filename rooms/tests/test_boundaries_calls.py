"""Exact instants and exact amounts of the rules docs/RULES.md states as numbers: the 24 h free
cancellation, the 20 s resume grace, a group client who never joins, and a client who was in
the room but never had media. Each boundary is pinned at the instant itself and just past it.
"""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import CommandKind, PaymentCommand, Settlement
from rooms import services
from rooms.errors import InvalidTransition
from rooms.models import (
    MediaLink,
    Offering,
    Presence,
    Pricing,
    Room,
    RoomEvent,
    Seat,
    SeatState,
)
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    seat_booked,
    seat_pay,
    weekdays_available,
)

pytestmark = pytest.mark.django_db

US = dt.timedelta(microseconds=1)
PRICE = 12000  # the factory offering: 120.00 EUR fixed, 50 % late-cancel and no-show fees


def _commands(seat: Seat) -> list[tuple[str, int]]:
    assert seat.payment_id is not None
    return list(
        PaymentCommand.objects.filter(payment_id=seat.payment_id).values_list(
            "kind", "amount_minor"
        )
    )


def _settlement(seat: Seat) -> Settlement:
    assert seat.payment_id is not None
    return Settlement.objects.get(payment_id=seat.payment_id)


# --- The 24 h free cancellation -----------------------------------------------------------------

# Three days after NOW, inside the expert's hours: the free period ends at FREE_UNTIL.
FAR_START = NOW + dt.timedelta(days=3)
FREE_UNTIL = FAR_START - dt.timedelta(hours=24)


def _booked_far_ahead() -> Seat:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert, start=dt.time(0), end=dt.time(23))
    offering = OfferingFactory.create(expert=expert)
    with time_machine.travel(NOW, tick=False):
        return seat_pay(services.booking_reserve(UserFactory.create(), offering, FAR_START))


@pytest.mark.parametrize(
    "at", [FREE_UNTIL - dt.timedelta(seconds=1), FREE_UNTIL], ids=["1s-before", "exactly-24h"]
)
def test_a_cancel_up_to_exactly_24_hours_before_the_start_is_free(at: dt.datetime) -> None:
    seat = _booked_far_ahead()
    with time_machine.travel(at, tick=False):
        services.seat_cancel(seat.pk, actor=seat.client, expected_fee_minor=0)
    seat.refresh_from_db()
    assert (seat.state, seat.cancel_fee_minor, seat.canceled_at) == (SeatState.CANCELED, 0, at)
    settlement = _settlement(seat)
    assert (settlement.amount_minor, settlement.rule, settlement.payout_minor) == (0, "released", 0)
    assert _commands(seat) == [(CommandKind.CANCEL, 0)]


@pytest.mark.parametrize(
    "at", [FREE_UNTIL + US, FREE_UNTIL + dt.timedelta(seconds=1)], ids=["1us-late", "1s-late"]
)
def test_a_cancel_a_moment_after_24_hours_before_the_start_pays_the_late_fee(
    at: dt.datetime,
) -> None:
    seat = _booked_far_ahead()
    with time_machine.travel(at, tick=False):
        services.seat_cancel(seat.pk, actor=seat.client, expected_fee_minor=6000)
    seat.refresh_from_db()
    assert (seat.state, seat.cancel_fee_minor) == (SeatState.CANCELED, 6000)
    settlement = _settlement(seat)
    # 50 % of 120.00 EUR; the platform keeps 15 % of it, the expert is paid the rest.
    assert (
        settlement.amount_minor,
        settlement.rule,
        settlement.platform_fee_minor,
        settlement.payout_minor,
    ) == (6000, "late_cancel", 900, 5100)
    assert _commands(seat) == [(CommandKind.CAPTURE, 6000)]


def test_a_client_shown_the_free_cancel_who_confirms_a_microsecond_late_is_asked_again() -> None:
    seat = _booked_far_ahead()
    with (
        time_machine.travel(FREE_UNTIL + US, tick=False),
        pytest.raises(InvalidTransition, match=r"The cancellation fee is now 60\.00"),
    ):
        services.seat_cancel(seat.pk, actor=seat.client, expected_fee_minor=0)
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    assert not Settlement.objects.filter(payment__seat=seat).exists()
    assert _commands(seat) == []


# --- The 20 s resume grace ----------------------------------------------------------------------

# Decided rule (docs/RULES.md, Presence: "a reconnect within 20 s of the drop" resumes): the
# grace includes its last instant. A reconnect at exactly 20 s resumes, so the grace check at
# exactly 20 s must not tell the peers the participant left; from 20 s + 1 µs it is a new join,
# and the check tells them. Both orders of a resume and the check at the same instant agree.
DROPPED_AT = CALL_START + dt.timedelta(seconds=10)
GRACE_ENDS = DROPPED_AT + dt.timedelta(seconds=20)


@pytest.fixture
def dropped(offering: Offering) -> Seat:
    """A client in the open lobby whose connection dropped at DROPPED_AT."""
    seat = seat_booked(offering)
    with time_machine.travel(CALL_START - dt.timedelta(minutes=10), tick=False):
        services.rooms_advance()
    services.presence_open(seat.room_id, seat.client, connection_id="a", now=CALL_START)
    assert services.presence_close("a", reason="dropped", now=DROPPED_AT)
    return seat


def test_a_resume_at_exactly_the_grace_resumes_and_the_check_then_tells_nobody(
    dropped: Seat,
) -> None:
    joined = services.presence_open(
        dropped.room_id, dropped.client, connection_id="b", now=GRACE_ENDS
    )
    assert joined.resumed
    assert not services.presence_grace_check(dropped.room_id, dropped.client_id, now=GRACE_ENDS)


def test_the_grace_check_at_exactly_twenty_seconds_tells_nobody_and_a_resume_then_resumes(
    dropped: Seat,
) -> None:
    assert not services.presence_grace_check(dropped.room_id, dropped.client_id, now=GRACE_ENDS)
    joined = services.presence_open(
        dropped.room_id, dropped.client, connection_id="b", now=GRACE_ENDS
    )
    assert joined.resumed


def test_a_microsecond_past_the_grace_the_check_tells_the_peers_and_a_return_is_a_new_join(
    dropped: Seat,
) -> None:
    assert services.presence_grace_check(dropped.room_id, dropped.client_id, now=GRACE_ENDS + US)
    joined = services.presence_open(
        dropped.room_id, dropped.client, connection_id="b", now=GRACE_ENDS + US
    )
    assert not joined.resumed


# --- Who came, and what they pay ----------------------------------------------------------------


def _at(minutes: float) -> dt.datetime:
    return CALL_START + dt.timedelta(minutes=minutes)


def _present(room: Room, user: User, start: dt.datetime, end: dt.datetime) -> None:
    Presence.objects.create(
        room=room,
        user=user,
        connection_id=f"c-{user.pk}",
        opened_at=start,
        last_heartbeat_at=end,
        closed_at=end,
    )


def _media(room: Room, client: User, start: dt.datetime, end: dt.datetime) -> None:
    MediaLink.objects.create(
        room=room, client=client, reported_by=client, started_at=start, ended_at=end
    )


def test_a_group_client_who_never_joins_pays_the_no_show_fee_while_the_others_pay_their_time() -> (
    None
):
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    # 2.00 EUR a started minute, 60 minutes: each seat's hold (and cap) is 120.00 EUR.
    group = OfferingFactory.create(
        expert=expert, capacity=3, pricing=Pricing.PER_MINUTE, price_minor=200
    )
    with time_machine.travel(NOW, tick=False):
        room = services.group_room_publish(expert, group, CALL_START)
        long_, short, absent = (
            seat_pay(services.group_seat_reserve(UserFactory.create(), room.pk)) for _ in range(3)
        )
    with time_machine.travel(_at(-10), tick=False):
        services.rooms_advance()
    for user in (expert, long_.client, short.client):
        _present(room, user, _at(0), _at(30))
    # 25 min 1 s of media = 26 started minutes; 10 min 30 s = 11 started minutes.
    _media(room, long_.client, _at(0), _at(25) + dt.timedelta(seconds=1))
    _media(room, short.client, _at(0.5), _at(11))
    services.room_mark_live(room.pk, at=_at(0))

    services.room_close(room.pk, reason="ended_by_expert", actor=expert, now=_at(30))

    def priced(seat: Seat) -> tuple[int, str, int, str]:
        settlement = _settlement(seat)
        return (
            settlement.amount_minor,
            settlement.rule,
            settlement.inputs["billable_seconds"],
            settlement.inputs["outcome"],
        )

    assert priced(long_) == (5200, "per_minute", 1501, "completed")
    assert priced(short) == (2200, "per_minute", 630, "completed")
    # The absent client's fee: 50 % of the seat's cap (120.00 EUR), not of anyone's time.
    assert priced(absent) == (6000, "client_no_show", 0, "client_no_show")
    assert [_commands(seat) for seat in (long_, short, absent)] == [
        [(CommandKind.CAPTURE, 5200)],
        [(CommandKind.CAPTURE, 2200)],
        [(CommandKind.CAPTURE, 6000)],
    ]
    # Each seat pays the expert 85 % of its own amount.
    assert [_settlement(seat).payout_minor for seat in (long_, short, absent)] == [4420, 1870, 5100]
    assert Room.objects.get(pk=room.pk).close_reason == "ended_by_expert"


# Decided rule: a client who was in the room (a presence the server saw) came, so they are not
# a no-show, whatever happened to the media. If the media never connected (docs/RULES.md: "A call
# that never connected (a black screen) costs nothing") the seat is a completed call of 0
# billable seconds, priced under a minute: nothing charged, the hold released, the expert paid
# nothing for it. Charging the no-show fee would bill the client for Parley's or the network's
# failure; the expert who was there too sees the call in their story and may report it.
def test_a_client_in_the_room_whose_media_never_connected_is_charged_nothing_not_a_no_show() -> (
    None
):
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(_at(-10), tick=False):
        services.rooms_advance()
    _present(room, room.expert, _at(0), _at(30))
    _present(room, seat.client, _at(1), _at(30))
    services.room_mark_live(room.pk, at=_at(1))

    services.room_close(room.pk, reason="ended_by_expert", actor=room.expert, now=_at(30))

    settlement = _settlement(seat)
    assert (settlement.amount_minor, settlement.rule, settlement.payout_minor) == (
        0,
        "under_a_minute",
        0,
    )
    assert (settlement.inputs["outcome"], settlement.inputs["billable_seconds"]) == (
        "completed",
        0,
    )
    assert _commands(seat) == [(CommandKind.CANCEL, 0)]
    assert not RoomEvent.objects.filter(room=room, kind="client_no_show").exists()
    assert Room.objects.get(pk=room.pk).close_reason == "ended_by_expert"
