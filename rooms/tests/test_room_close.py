"""The room's timed transitions and its close: every close reason, metered settlement, and
exactly one settlement however many callers close at once."""

from __future__ import annotations

import datetime as dt
from functools import partial

import pytest
import time_machine
from pytest_django import DjangoCaptureOnCommitCallbacks

from accounts.models import User
from accounts.tests.factories import StaffFactory, UserFactory
from billing.models import CommandKind, Payment, PaymentCommand, Settlement
from rooms import services
from rooms import tasks as rooms_tasks
from rooms.errors import InvalidTransition
from rooms.models import (
    MediaLink,
    Offering,
    Presence,
    Pricing,
    Room,
    RoomEvent,
    RoomState,
    Seat,
    SeatState,
)
from rooms.services.room_state import room_timers_schedule
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    seat_booked,
    seat_pay,
    weekdays_available,
)
from rooms.tests.races import lock_held_until_waited_on, race

UTC = dt.UTC
START = CALL_START  # six hours after NOW, a 60-minute session
END = START + dt.timedelta(hours=1)


def _at(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


def _present(room: Room, user: User, start: dt.datetime, end: dt.datetime | None) -> Presence:
    return Presence.objects.create(
        room=room,
        user=user,
        connection_id=f"c-{user.pk}-{start.timestamp()}",
        opened_at=start,
        last_heartbeat_at=end or start,
        closed_at=end,
    )


def _media(seat: Seat, start: dt.datetime, end: dt.datetime | None) -> None:
    MediaLink.objects.create(
        room=seat.room,
        client=seat.client,
        reported_by=seat.client,
        started_at=start,
        ended_at=end,
        candidate_type="host",
    )


def _advance(at: dt.datetime) -> dict[str, int]:
    with time_machine.travel(at, tick=False):
        return services.rooms_advance()


def _go_live(seat: Seat, at: dt.datetime) -> None:
    _advance(at - dt.timedelta(minutes=1))
    assert services.room_mark_live(seat.room_id, at=at)


def _settlement(seat: Seat) -> Settlement:
    assert seat.payment_id is not None
    return Settlement.objects.get(payment_id=seat.payment_id)


def _room(seat: Seat) -> Room:
    return Room.objects.get(pk=seat.room_id)


@pytest.fixture
def seat(offering: Offering) -> Seat:
    return seat_booked(offering)


@pytest.mark.django_db
class TestTimedTransitions:
    def test_the_lobby_opens_ten_minutes_before_the_start(self, seat: Seat) -> None:
        assert _advance(_at(-10.5))["opened"] == 0
        assert _room(seat).state == RoomState.SCHEDULED
        assert _advance(_at(-10))["opened"] == 1
        room = _room(seat)
        assert (room.state, room.opened_at) == (RoomState.OPEN, _at(-10))
        assert _advance(_at(-9))["opened"] == 0

    def test_the_paid_end_closes_a_live_room_and_bills_the_connected_time(self, seat: Seat) -> None:
        room = _room(seat)
        _present(room, room.expert, _at(-2), None)
        _present(room, seat.client, _at(0), None)
        _go_live(seat, _at(0))
        _media(seat, _at(1), _at(31))
        Presence.objects.filter(room=room).update(last_heartbeat_at=END)
        assert _advance(END)["closed"] == 1
        room = _room(seat)
        assert (room.state, room.close_reason, room.closed_at) == (
            RoomState.CLOSED,
            "time_limit",
            END,
        )
        settlement = _settlement(seat)
        assert (settlement.rule, settlement.amount_minor) == ("fixed", 12000)
        assert settlement.inputs["billable_seconds"] == 1800
        assert not Presence.objects.filter(closed_at__isnull=True).exists()
        capture = PaymentCommand.objects.get(kind=CommandKind.CAPTURE)
        assert capture.amount_minor == 12000

    def test_a_per_minute_call_is_billed_by_the_started_minute(self) -> None:
        expert = expert_create(time_zone="UTC")
        weekdays_available(expert)
        offering = OfferingFactory.create(
            expert=expert, pricing=Pricing.PER_MINUTE, price_minor=200
        )
        seat = seat_booked(offering)
        room = _room(seat)
        _present(room, expert, _at(0), _at(20))
        _present(room, seat.client, _at(0), _at(20))
        _go_live(seat, _at(0))
        _media(seat, _at(5), _at(5) + dt.timedelta(seconds=601))
        services.room_close(room.pk, reason="ended_by_expert", actor=expert, now=_at(20))
        settlement = _settlement(seat)
        assert (settlement.rule, settlement.amount_minor) == ("per_minute", 2200)
        assert settlement.inputs["cap_minor"] == 12000

    def test_an_expert_who_never_joins_is_a_no_show_and_the_hold_is_released(
        self, seat: Seat
    ) -> None:
        room = _room(seat)
        _present(room, seat.client, _at(-3), None)
        _advance(_at(-10))
        assert _advance(_at(9.9))["closed"] == 0
        assert _advance(_at(10))["closed"] == 1
        room = _room(seat)
        assert room.close_reason == "expert_no_show"
        settlement = _settlement(seat)
        assert (settlement.rule, settlement.amount_minor) == ("expert_no_show", 0)
        assert PaymentCommand.objects.get().kind == CommandKind.CANCEL
        assert RoomEvent.objects.filter(room=room, kind="expert_no_show").count() == 1

    def test_a_lobby_that_reaches_its_end_unmet_is_still_a_no_show(self, seat: Seat) -> None:
        """The sweep was down for the whole session: at its first run the room is past its
        end, and what closes it is who never came, not the time limit."""
        room = _room(seat)
        _present(room, seat.client, _at(-3), None)
        _advance(_at(-10))
        assert _advance(_at(61))["closed"] == 1
        assert _room(seat).close_reason == "expert_no_show"
        assert _settlement(seat).amount_minor == 0
        assert RoomEvent.objects.filter(room=room, kind="expert_no_show").count() == 1

    def test_expert_no_show_wins_when_nobody_came(self, seat: Seat) -> None:
        _advance(_at(-10))
        _advance(_at(10))
        assert _room(seat).close_reason == "expert_no_show"

    def test_a_client_who_never_joins_pays_the_no_show_fee(self, seat: Seat) -> None:
        room = _room(seat)
        _present(room, room.expert, _at(-5), None)
        _advance(_at(-10))
        _advance(_at(10))
        assert _room(seat).close_reason == "client_no_show"
        settlement = _settlement(seat)
        assert (settlement.rule, settlement.amount_minor) == ("client_no_show", 6000)
        assert settlement.payout_minor == 5100  # the expert is paid for their time

    def test_a_live_room_everyone_left_closes_after_five_minutes(self, seat: Seat) -> None:
        room = _room(seat)
        _present(room, room.expert, _at(0), _at(20))
        _present(room, seat.client, _at(0), _at(19))
        _go_live(seat, _at(0))
        _media(seat, _at(0), _at(19))
        assert _advance(_at(24.9))["closed"] == 0
        assert _advance(_at(25))["closed"] == 1
        assert _room(seat).close_reason == "empty"
        assert _settlement(seat).inputs["billable_seconds"] == 19 * 60

    def test_a_connection_whose_heartbeats_stopped_counts_as_gone(self, seat: Seat) -> None:
        room = _room(seat)
        ghost = _present(room, room.expert, _at(0), None)
        _present(room, seat.client, _at(0), _at(10))
        Presence.objects.filter(pk=ghost.pk).update(last_heartbeat_at=_at(10))
        _go_live(seat, _at(0))
        _media(seat, _at(0), None)
        assert _advance(_at(15))["closed"] == 1
        assert _room(seat).close_reason == "empty"
        assert _settlement(seat).inputs["billable_seconds"] == 600

    def test_staff_terminating_a_room_bills_what_was_used(self, seat: Seat) -> None:
        room = _room(seat)
        _present(room, room.expert, _at(0), None)
        _present(room, seat.client, _at(0), None)
        _go_live(seat, _at(0))
        _media(seat, _at(0), None)
        Presence.objects.filter(room=room).update(last_heartbeat_at=_at(2))  # both still in
        staff = StaffFactory.create()
        room = services.room_close(room.pk, reason="terminated_by_staff", actor=staff, now=_at(2))
        assert room.close_reason == "terminated_by_staff"
        assert _settlement(seat).inputs["billable_seconds"] == 120
        assert RoomEvent.objects.get(room=room, kind="closed").actor == staff


@pytest.mark.django_db
class TestClose:
    def test_an_unpaid_reservation_ends_with_the_room(self, offering: Offering) -> None:
        expert = offering.expert
        group = OfferingFactory.create(expert=expert, capacity=3)
        with time_machine.travel(NOW, tick=False):
            room = services.group_room_publish(expert, group, START)
            unpaid = services.group_seat_reserve(UserFactory.create(), room.pk)
        Seat.objects.filter(pk=unpaid.pk).update(reserved_until=END)
        _advance(_at(-10))
        services.room_close(room.pk, reason="ended_by_expert", now=_at(1))
        unpaid.refresh_from_db()
        assert unpaid.state == SeatState.EXPIRED
        assert unpaid.payment is not None
        assert Payment.objects.get(pk=unpaid.payment.pk).state == "canceled"

    def test_closing_twice_settles_once(self, seat: Seat) -> None:
        _advance(_at(-10))
        first = services.room_close(seat.room_id, reason="ended_by_expert", now=_at(1))
        again = services.room_close(seat.room_id, reason="time_limit", now=_at(2))
        assert (again.close_reason, again.closed_at) == (first.close_reason, first.closed_at)
        assert Settlement.objects.count() == 1
        assert PaymentCommand.objects.filter(kind__in=["capture", "cancel"]).count() == 1

    def test_a_scheduled_room_cannot_close_and_an_unknown_reason_is_refused(
        self, seat: Seat
    ) -> None:
        with pytest.raises(InvalidTransition, match="only an open or live room"):
            services.room_close(seat.room_id, reason="ended_by_expert", now=_at(-30))
        _advance(_at(-10))
        with pytest.raises(InvalidTransition, match="not a reason"):
            services.room_close(seat.room_id, reason="bored", now=_at(1))
        assert _room(seat).state == RoomState.OPEN
        assert not Settlement.objects.exists()

    def test_the_live_window_starts_once(self, seat: Seat) -> None:
        _advance(_at(-10))
        assert services.room_mark_live(seat.room_id, at=_at(0))
        assert not services.room_mark_live(seat.room_id, at=_at(1))
        assert _room(seat).live_at == _at(0)


@pytest.mark.django_db
def test_a_room_booked_hours_ahead_schedules_no_far_timer(
    offering: Offering,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    """A Redis broker redelivers an ETA task every visibility timeout (1 h) until it runs, so
    nothing further out than the near future is handed to Celery: the 10 s sweep covers it."""
    etas: list[dt.datetime] = []
    monkeypatch.setattr(rooms_tasks.rooms_advance, "apply_async", lambda eta: etas.append(eta))
    with (
        time_machine.travel(NOW, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        seat = services.booking_reserve(
            UserFactory.create(), offering, START + dt.timedelta(days=3)
        )
        services.booking_reserve(UserFactory.create(), offering, START)
    assert etas == []
    room = Room.objects.get(pk=seat.room_id)
    assert room.starts_at - NOW > dt.timedelta(days=3)


@pytest.mark.django_db
def test_a_room_asks_to_be_advanced_at_its_exact_moments_when_they_are_near(
    offering: Offering,
    monkeypatch: pytest.MonkeyPatch,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    etas: list[dt.datetime] = []
    monkeypatch.setattr(rooms_tasks.rooms_advance, "apply_async", lambda eta: etas.append(eta))
    with time_machine.travel(NOW, tick=False):
        seat = services.booking_reserve(UserFactory.create(), offering, START)
    with django_capture_on_commit_callbacks(execute=True):
        room_timers_schedule(_room(seat), now=_at(-30))
    # The lobby and the no-show check are within the horizon; the paid end is not yet.
    assert etas == [_at(-10), _at(10)]
    etas.clear()
    with django_capture_on_commit_callbacks(execute=True):
        room_timers_schedule(_room(seat), now=_at(15))
    assert etas == [END]


@pytest.mark.django_db(transaction=True)
def test_ten_callers_closing_one_room_at_once_settle_each_seat_once() -> None:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    group = OfferingFactory.create(expert=expert, capacity=3)
    with time_machine.travel(NOW, tick=False):
        room = services.group_room_publish(expert, group, START)
        seats = [
            seat_pay(services.group_seat_reserve(UserFactory.create(), room.pk)) for _ in range(3)
        ]
    _advance(_at(-10))
    for seat in seats:
        _present(room, seat.client, _at(0), _at(30))
        _media(seat, _at(0), _at(30))
    _present(room, expert, _at(0), _at(30))
    services.room_mark_live(room.pk, at=_at(0))

    # The closers queue on the room (the first holding the payments, the rest behind it on
    # those): all ten are inside room_close together when the holder lets go.
    with lock_held_until_waited_on(
        lambda: Room.objects.select_for_update().get(pk=room.pk), waiters=10
    ) as held:
        outcomes = race(
            [partial(services.room_close, room.pk, reason="ended_by_expert", now=_at(30))] * 10
        )

    assert held.seen, f"the closers never queued together ({held.most_waiting} seen)"
    assert outcomes.overlapped()
    # A close that finds the room closed returns it: every caller is answered "ok".
    assert outcomes == ["ok"] * 10
    # 30 minutes with media up: each seat pays the fixed price, once.
    assert (
        sorted(Settlement.objects.values_list("amount_minor", "inputs__billable_seconds", "rule"))
        == [(12000, 1800, "fixed")] * 3
    )
    assert (
        sorted(
            PaymentCommand.objects.filter(kind=CommandKind.CAPTURE).values_list(
                "amount_minor", flat=True
            )
        )
        == [12000] * 3
    )
    assert RoomEvent.objects.filter(room=room, kind="closed").count() == 1
