"""Group sessions, DST at publish time, and the edges found in review of the booking flow."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts.models import OutboundEmail, User
from accounts.tests.factories import UserFactory
from rooms import services
from rooms.errors import BookingRefused, InvalidTransition
from rooms.models import AvailabilityOverride, Offering, Room, RoomState, Seat, SeatState
from rooms.tests.factories import NOW, OfferingFactory, expert_create, seat_pay

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_now")]

UTC = dt.UTC
SLOT = dt.datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def group() -> Offering:
    return OfferingFactory.create(expert=expert_create(time_zone="UTC"), capacity=3)


def _publish(expert: User, offering: Offering, value: str) -> Any:
    return _signed_in(expert).post(
        reverse("rooms:group_session_publish", args=[offering.pk]),
        {"starts_at": value},
        follow=True,
    )


def test_publishing_a_time_the_clocks_skip_is_refused_with_the_reason() -> None:
    expert = expert_create(time_zone="Europe/Berlin")
    offering = OfferingFactory.create(expert=expert, capacity=3, horizon_days=365)
    with time_machine.travel(dt.datetime(2027, 3, 1, tzinfo=UTC), tick=False):
        page = _publish(expert, offering, "2027-03-28T02:30")
    assert "02:30 does not exist on 28 March 2027 in Europe/Berlin" in page.content.decode()
    assert not Room.objects.exists()


def test_publishing_a_repeated_time_takes_its_first_occurrence_and_lasts_its_length() -> None:
    expert = expert_create(time_zone="Europe/Berlin")
    offering = OfferingFactory.create(expert=expert, capacity=3, horizon_days=365)
    with time_machine.travel(dt.datetime(2026, 10, 1, tzinfo=UTC), tick=False):
        _publish(expert, offering, "2026-10-25T02:30")
    room = Room.objects.get()
    assert room.starts_at == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert room.ends_at - room.starts_at == dt.timedelta(hours=1)


def test_publishing_reads_the_time_in_the_zone_availability_is_kept_in() -> None:
    expert = expert_create(time_zone="Asia/Tokyo")
    expert.time_zone = "America/New_York"  # the account's zone differs from the profile's
    expert.save()
    offering = OfferingFactory.create(expert=expert, capacity=3)
    _publish(expert, offering, "2026-12-10T18:00")
    assert Room.objects.get().starts_at == dt.datetime(2026, 12, 10, 9, 0, tzinfo=UTC)


def test_a_far_future_week_does_not_break_the_slot_page(offering: Offering) -> None:
    response = Client().get(reverse("rooms:offering_book", args=[offering.pk]) + "?from=9999-12-30")
    assert response.status_code == 200


def test_rescheduling_keeps_the_length_booked_even_if_the_offering_changed(
    offering: Offering,
) -> None:
    client = UserFactory.create()
    seat = seat_pay(services.booking_reserve(client, offering, SLOT))
    offering.length_minutes = 30
    offering.save()
    new_start = SLOT + dt.timedelta(days=1)
    room = services.seat_reschedule(seat.pk, actor=client, new_start=new_start)
    assert room.ends_at - room.starts_at == dt.timedelta(hours=1)
    assert room.max_amount_minor == 12000


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("private", "This session is private"),
        ("started", "no longer open for booking"),
        ("notice", "starts too soon"),
        ("second seat", "You already have a seat in this session."),
    ],
)
def test_group_seat_refusals_say_why(
    group: Offering, offering: Offering, case: str, message: str
) -> None:
    client = UserFactory.create()
    room = services.group_room_publish(group.expert, group, SLOT)
    if case == "private":
        room = services.booking_reserve(UserFactory.create(), offering, SLOT).room
    elif case == "second seat":
        services.group_seat_reserve(client, room.pk)
    seats_before = Seat.objects.count()
    moment = {"started": SLOT + dt.timedelta(minutes=1), "notice": SLOT - dt.timedelta(hours=1)}
    with (
        time_machine.travel(moment.get(case, NOW), tick=False),
        pytest.raises(BookingRefused, match=message),
    ):
        services.group_seat_reserve(client, room.pk)
    assert Seat.objects.count() == seats_before


def test_group_emails_reach_the_expert_once_per_room_and_a_leaving_client_is_a_notice(
    group: Offering, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    expert = group.expert
    room = services.group_room_publish(expert, group, SLOT)
    clients = [UserFactory.create() for _ in range(2)]
    seats = [seat_pay(services.group_seat_reserve(c, room.pk)) for c in clients]
    with time_machine.travel(SLOT - dt.timedelta(minutes=10), tick=False):
        services.reminders_queue()
    reminders = OutboundEmail.objects.filter(key__startswith="reminder", to=expert.email)
    assert reminders.count() == 1

    mailoutbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.seat_cancel(seats[0].pk, actor=clients[0])
    to_expert = [m for m in mailoutbox if m.to == [expert.email]]
    assert len(to_expert) == 1
    assert "canceled their seat" in to_expert[0].subject
    assert not to_expert[0].attachments  # the session stays in the expert's calendar
    assert Room.objects.get(pk=room.pk).state == RoomState.SCHEDULED

    mailoutbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        services.room_cancel_by_expert(room.pk, actor=expert)
    to_expert = [m for m in mailoutbox if m.to == [expert.email]]
    assert len(to_expert) == 1
    assert "METHOD:CANCEL" in to_expert[0].attachments[0][1]


def test_confirming_a_canceled_booking_says_it_was_canceled(offering: Offering) -> None:
    client = UserFactory.create()
    seat = services.booking_reserve(client, offering, SLOT)
    services.seat_cancel(seat.pk, actor=client)
    with pytest.raises(BookingRefused, match="This booking was canceled"):
        services.seat_confirm(seat.pk)


def test_a_fee_that_changed_since_the_page_was_shown_is_not_charged_silently(
    offering: Offering,
) -> None:
    client = UserFactory.create()
    seat = seat_pay(services.booking_reserve(client, offering, SLOT))
    with (
        time_machine.travel(SLOT - dt.timedelta(hours=2), tick=False),
        pytest.raises(InvalidTransition, match=r"fee is now 60\.00 EUR"),
    ):
        services.seat_cancel(seat.pk, actor=client, expected_fee_minor=0)
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED


def test_the_join_link_tells_a_client_whose_booking_was_canceled(offering: Offering) -> None:
    client = UserFactory.create()
    seat = seat_pay(services.booking_reserve(client, offering, SLOT))
    services.seat_cancel(seat.pk, actor=client)
    page = _signed_in(client).get(reverse("rooms:join", args=[seat.room_id]))
    assert page.status_code == 403
    assert "Your booking of this session is canceled" in page.content.decode()


def test_a_price_with_more_decimals_than_the_currency_has_is_refused() -> None:
    expert = expert_create()
    response = _signed_in(expert).post(
        reverse("rooms:offering_new"),
        {
            "title": "Consultation",
            "length_minutes": 30,
            "pricing": "fixed",
            "price": "99.99",
            "currency": "JPY",
            "capacity": 1,
            "notice_minutes": 120,
            "buffer_before_minutes": 0,
            "buffer_after_minutes": 0,
            "horizon_days": 60,
            "late_cancel_fee_percent": 50,
            "no_show_fee_percent": 50,
        },
    )
    assert "JPY has 0 decimal places: enter a whole amount." in response.content.decode()
    assert not Offering.objects.exists()


def test_removing_another_experts_date_is_not_found() -> None:
    owner, other = expert_create(), expert_create()
    override = AvailabilityOverride.objects.create(
        expert=owner, date=dt.date(2026, 12, 24), kind="day_off"
    )
    response = _signed_in(other).post(reverse("rooms:override_delete", args=[override.pk]))
    assert response.status_code == 404
    assert AvailabilityOverride.objects.filter(pk=override.pk).exists()


def test_an_expert_cannot_cancel_a_session_that_has_started(offering: Offering) -> None:
    seat = seat_pay(services.booking_reserve(UserFactory.create(), offering, SLOT))
    with (
        time_machine.travel(SLOT + dt.timedelta(minutes=1), tick=False),
        pytest.raises(InvalidTransition, match="has started or ended"),
    ):
        services.room_cancel_by_expert(seat.room_id, actor=offering.expert)
    assert Room.objects.get(pk=seat.room_id).state == RoomState.SCHEDULED


def test_a_group_seat_cannot_be_moved(group: Offering) -> None:
    client = UserFactory.create()
    room = services.group_room_publish(group.expert, group, SLOT)
    seat = seat_pay(services.group_seat_reserve(client, room.pk))
    with pytest.raises(InvalidTransition, match="Group sessions cannot be moved"):
        services.seat_reschedule(seat.pk, actor=client, new_start=SLOT + dt.timedelta(days=1))
