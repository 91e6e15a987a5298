from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import time_machine
from django.db import IntegrityError, transaction

from accounts.models import Block, User
from accounts.tests.factories import UserFactory
from rooms import selectors, services
from rooms.errors import BookingRefused, RoomsError, SlotTaken
from rooms.models import Offering, Room, RoomEvent, RoomKind, RoomState, Seat, SeatState
from rooms.services.records import expert_calendar_lock
from rooms.tests.factories import NOW, OfferingFactory, expert_create, seat_pay
from rooms.tests.races import lock_held_until_waited_on, race, racers_at_once

pytestmark = pytest.mark.django_db

UTC = dt.UTC
SLOT = dt.datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _frozen_now() -> Iterator[None]:
    # tick=True: time moves on (threads, lease expiry) from a known starting point.
    with time_machine.travel(NOW, tick=True):
        yield


def _book(client: User, offering: Offering, start: dt.datetime = SLOT) -> Seat:
    return services.booking_reserve(client, offering, start)


def test_booking_a_slot_makes_a_scheduled_room_and_a_seat_held_for_ten_minutes(
    offering: Offering,
) -> None:
    client = UserFactory.create()
    seat = _book(client, offering)
    room = seat.room
    assert (room.state, room.kind, room.capacity) == (RoomState.SCHEDULED, RoomKind.PRIVATE, 1)
    assert (room.starts_at, room.ends_at) == (SLOT, SLOT + dt.timedelta(hours=1))
    assert (room.price_minor, room.currency, room.pricing) == (12000, "EUR", "fixed")
    assert seat.state == SeatState.RESERVED
    assert (
        dt.timedelta(minutes=9)
        < seat.reserved_until - dt.datetime.now(UTC)
        <= dt.timedelta(minutes=10)
    )
    assert [event.kind for event in room.events.all()] == ["booked"]
    assert SLOT not in [
        s.starts_at for s in selectors.offering_slots(offering, SLOT, SLOT + dt.timedelta(hours=1))
    ]


def test_postgresql_refuses_two_live_rooms_of_one_expert_that_overlap(offering: Offering) -> None:
    seat = _book(UserFactory.create(), offering)
    clash = Room(
        expert=offering.expert,
        kind=RoomKind.PRIVATE,
        title="Sneaked in",
        starts_at=SLOT + dt.timedelta(minutes=30),
        ends_at=SLOT + dt.timedelta(minutes=90),
        blocked_from=SLOT + dt.timedelta(minutes=30),
        blocked_until=SLOT + dt.timedelta(minutes=90),
        pricing="fixed",
        price_minor=1,
        currency="EUR",
        late_cancel_fee_percent=0,
        no_show_fee_percent=0,
    )
    with pytest.raises(IntegrityError, match="room_expert_no_overlap"), transaction.atomic():
        clash.save()
    # A canceled room does not count.
    Room.objects.filter(pk=seat.room_id).update(state=RoomState.CANCELED)
    clash.save()


@pytest.mark.django_db(transaction=True)
def test_fifty_clients_racing_for_one_slot_get_one_room_and_49_taken_answers(
    offering: Offering,
) -> None:
    clients = [UserFactory.create() for _ in range(50)]

    # Every booking queues on the expert's calendar lock for the slot's hour: as many as this
    # process's connection pool lets into PostgreSQL at once (18 of the 50; the rest queue on
    # the pool) are inside booking_reserve together when the holder lets go.
    with lock_held_until_waited_on(
        lambda: expert_calendar_lock(offering.expert, SLOT, SLOT + dt.timedelta(hours=1)),
        waiters=racers_at_once(50),
    ) as held:
        outcomes = race([partial(_book, client, offering) for client in clients])

    assert held.seen, f"the bookings never queued together ({held.most_waiting} seen)"
    assert outcomes.overlapped()
    assert sorted(outcomes) == ["This slot was just taken. Pick another time."] * 49 + ["ok"]
    assert Room.objects.count() == 1
    assert Seat.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_twenty_clients_racing_for_a_group_of_three_get_three_seats() -> None:
    expert = expert_create(time_zone="UTC")
    group = OfferingFactory.create(expert=expert, capacity=3)
    room = services.group_room_publish(expert, group, SLOT)
    clients = [UserFactory.create() for _ in range(20)]

    with lock_held_until_waited_on(
        lambda: Room.objects.select_for_update().get(pk=room.pk), waiters=racers_at_once(20)
    ) as held:
        outcomes = race(
            [partial(services.group_seat_reserve, client, room.pk) for client in clients]
        )

    assert held.seen, f"the clients never queued together ({held.most_waiting} seen)"
    assert outcomes.overlapped()
    assert sorted(outcomes) == ["This session is full."] * 17 + ["ok"] * 3
    assert Seat.objects.filter(room=room).count() == 3


def test_a_taken_slot_answers_with_the_nearest_free_slots(offering: Offering) -> None:
    _book(UserFactory.create(), offering)
    with pytest.raises(SlotTaken) as taken:
        _book(UserFactory.create(), offering)
    assert taken.value.alternatives
    assert SLOT not in taken.value.alternatives
    assert taken.value.alternatives[0] in (
        SLOT - dt.timedelta(hours=1),
        SLOT + dt.timedelta(hours=1),
    )
    assert Room.objects.count() == 1


def _refusal(offering: Offering, client: User, start: dt.datetime) -> str:
    with pytest.raises(RoomsError) as refused:
        _book(client, offering, start)
    assert Room.objects.count() == 0
    assert Seat.objects.count() == 0
    assert RoomEvent.objects.count() == 0
    return str(refused.value)


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (NOW - dt.timedelta(hours=1), "That time has already passed."),
        (NOW + dt.timedelta(hours=1), "This session needs at least 2 hours' notice."),
        (NOW + dt.timedelta(days=61), "This session can be booked at most 60 days ahead."),
        (
            dt.datetime(2026, 12, 2, 20, 0, tzinfo=UTC),
            "That time is outside the expert's availability.",
        ),
        (
            dt.datetime(2026, 12, 2, 10, 30, tzinfo=UTC),
            "That time is outside the expert's availability.",
        ),
    ],
)
def test_a_time_the_policy_does_not_offer_is_refused_with_the_reason(
    offering: Offering, start: dt.datetime, message: str
) -> None:
    assert message in _refusal(offering, UserFactory.create(), start)


def test_an_inactive_offering_cannot_be_booked(offering: Offering) -> None:
    offering.is_active = False
    offering.save()
    assert "not available for booking any more" in _refusal(offering, UserFactory.create(), SLOT)


@pytest.mark.parametrize("direction", ["client blocked expert", "expert blocked client"])
def test_a_blocked_pair_cannot_book_each_other(offering: Offering, direction: str) -> None:
    client = UserFactory.create()
    if direction == "client blocked expert":
        Block.objects.create(blocker=client, blocked=offering.expert)
    else:
        Block.objects.create(blocker=offering.expert, blocked=client)
    assert _refusal(offering, client, SLOT) == "You cannot book this expert."


def test_an_unverified_user_cannot_book(offering: Offering) -> None:
    message = _refusal(offering, UserFactory.create(verified=False), SLOT)
    assert message == "Verify your email address before booking; check your inbox."


def test_an_expert_cannot_book_their_own_session(offering: Offering) -> None:
    assert _refusal(offering, offering.expert, SLOT) == "You cannot book your own session."


def test_a_group_offering_is_not_booked_as_a_private_slot(offering: Offering) -> None:
    offering.capacity = 2
    offering.save()
    assert "group offering" in _refusal(offering, UserFactory.create(), SLOT)


def test_an_expired_reservation_frees_the_slot_before_and_after_the_sweep(
    offering: Offering,
) -> None:
    first, second = UserFactory.create(), UserFactory.create()
    stale = _book(first, offering)
    window = (SLOT, SLOT + dt.timedelta(minutes=1))

    with time_machine.travel(NOW + dt.timedelta(minutes=11), tick=False):
        # Read time: a reservation past its hold no longer blocks, sweep or no sweep.
        assert [s.starts_at for s in selectors.offering_slots(offering, *window)] == [SLOT]
        # A late confirmation is refused cleanly and changes nothing.
        with pytest.raises(BookingRefused, match="expired before it was confirmed"):
            services.seat_confirm(stale.pk)
        stale.refresh_from_db()
        assert stale.state == SeatState.RESERVED
        # Someone else can take the slot; the stale room is canceled in the same transaction.
        fresh = _book(second, offering)

    stale.refresh_from_db()
    assert stale.state == SeatState.EXPIRED
    assert Room.objects.get(pk=stale.room_id).state == RoomState.CANCELED
    assert Room.objects.get(pk=stale.room_id).cancel_reason == "reservation_expired"
    assert fresh.room.state == RoomState.SCHEDULED


def test_the_sweep_expires_old_reservations_once(offering: Offering) -> None:
    seat = _book(UserFactory.create(), offering)
    with time_machine.travel(NOW + dt.timedelta(minutes=11), tick=False):
        assert services.reservations_expire() == 1
        assert services.reservations_expire() == 0
    seat.refresh_from_db()
    assert seat.state == SeatState.EXPIRED
    kinds = list(RoomEvent.objects.filter(room=seat.room).values_list("kind", flat=True))
    assert kinds == ["booked", "reservation_expired", "state_changed"]


def test_confirming_twice_confirms_once_and_emails_once(
    offering: Offering, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    seat = _book(UserFactory.create(), offering)
    with django_capture_on_commit_callbacks(execute=True):
        services.seat_confirm(seat.pk)
        services.seat_confirm(seat.pk)
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    assert RoomEvent.objects.filter(kind="seat_confirmed").count() == 1
    assert sorted(m.to[0] for m in mailoutbox) == sorted([seat.client.email, offering.expert.email])
    ics = mailoutbox[0].attachments[0]
    assert ics[0] == "invite.ics"
    assert "METHOD:REQUEST" in ics[1]
    assert f"UID:room-{seat.room_id}@parley" in ics[1]
    assert "DTSTART:20261202T100000Z" in ics[1]


def test_a_group_invitation_does_not_show_the_other_clients_addresses(
    django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    expert = expert_create(time_zone="UTC")
    group = OfferingFactory.create(expert=expert, capacity=3)
    room = services.group_room_publish(expert, group, SLOT)
    first, second = UserFactory.create(), UserFactory.create()
    with django_capture_on_commit_callbacks(execute=True):
        for client in (first, second):
            seat_pay(services.group_seat_reserve(client, room.pk))
    to_second = [m for m in mailoutbox if m.to == [second.email]]
    invitation = to_second[0].attachments[0][1]
    assert second.email in invitation
    assert first.email not in invitation


def test_a_session_closed_early_frees_the_rest_of_its_time_after_its_buffer(
    offering: Offering,
) -> None:
    """A closed room keeps the expert busy only to its close plus its buffer after; a room not
    closed keeps its whole blocked range, in the service check and in PostgreSQL alike."""
    seat = _book(UserFactory.create(), offering)
    room = Room.objects.get(pk=seat.room_id)
    buffer_after = dt.timedelta(minutes=10)
    Room.objects.filter(pk=room.pk).update(blocked_until=room.ends_at + buffer_after)
    closed_at = SLOT + dt.timedelta(minutes=10)
    later = (SLOT + dt.timedelta(minutes=30), SLOT + dt.timedelta(minutes=45))
    Room.objects.filter(pk=room.pk).update(state=RoomState.LIVE)
    assert selectors.rooms_blocking(offering.expert, *later).exists()
    Room.objects.filter(pk=room.pk).update(
        state=RoomState.CLOSED, closed_at=closed_at, close_reason="ended_by_expert"
    )
    free_from = closed_at + buffer_after
    assert not selectors.rooms_blocking(offering.expert, free_from, later[1]).exists()
    assert selectors.rooms_blocking(
        offering.expert, free_from - dt.timedelta(minutes=1), later[1]
    ).exists()
