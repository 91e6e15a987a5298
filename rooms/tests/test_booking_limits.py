"""Security (issue 16): one client cannot squat calendars with unpaid reservations. At most
UNPAID_RESERVATIONS_MAX (3) reservations wait for the card at once, and at most
UNPAID_RESERVATIONS_PER_EXPERT_MAX (2) with one expert; concurrent bookings of one client
cannot all slip past the count."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from functools import partial

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import Payment, PaymentState
from rooms import services
from rooms.errors import RoomsError
from rooms.models import Offering, Seat, SeatState
from rooms.tests.factories import NOW, OfferingFactory, expert_create, seat_pay, weekdays_available
from rooms.tests.races import lock_held_until_waited_on, race

UTC = dt.UTC
DAY = dt.datetime(2026, 12, 2, tzinfo=UTC)
PRICE = 12000  # OfferingFactory's price: the hold of each reservation


@pytest.fixture(autouse=True)
def _now() -> Iterator[None]:
    with time_machine.travel(NOW, tick=True):
        yield


def _offering() -> Offering:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    return OfferingFactory.create(expert=expert)


def _at(hour: int) -> dt.datetime:
    return DAY.replace(hour=hour)


def _unpaid(client: User) -> list[tuple[int, str, str]]:
    return sorted(
        (seat.payment.amount_minor, seat.payment.currency, seat.payment.state)
        for seat in Seat.objects.filter(client=client, state=SeatState.RESERVED).select_related(
            "payment"
        )
        if seat.payment is not None and seat.payment.state == PaymentState.PENDING
    )


@pytest.mark.django_db
def test_a_client_holds_at_most_two_unpaid_reservations_with_one_expert_and_three_overall() -> None:
    client = UserFactory.create()
    first, second, third = _offering(), _offering(), _offering()
    services.booking_reserve(client, first, _at(9))
    paid = services.booking_reserve(client, first, _at(11))
    with pytest.raises(RoomsError, match="You have 2 bookings with .* waiting for payment"):
        services.booking_reserve(client, first, _at(13))
    services.booking_reserve(client, second, _at(9))
    with pytest.raises(RoomsError, match="You have 3 bookings waiting for payment"):
        services.booking_reserve(client, third, _at(9))
    assert _unpaid(client) == [(PRICE, "EUR", PaymentState.PENDING)] * 3
    assert Payment.objects.filter(payer=client).count() == 3

    # Paying for one frees a place: the next booking goes through.
    seat_pay(paid)
    assert paid.payment is not None
    paid.payment.refresh_from_db()
    assert (paid.payment.state, paid.payment.authorized_minor) == (PaymentState.AUTHORIZED, PRICE)
    services.booking_reserve(client, third, _at(9))
    assert _unpaid(client) == [(PRICE, "EUR", PaymentState.PENDING)] * 3

    # A reservation that lapsed no longer counts.
    with time_machine.travel(NOW + dt.timedelta(minutes=11), tick=False):
        services.booking_reserve(client, first, _at(15))
    # Another client is not limited by this one.
    services.booking_reserve(UserFactory.create(), third, _at(11))


@pytest.mark.django_db
def test_a_group_seat_counts_as_an_unpaid_reservation() -> None:
    client = UserFactory.create()
    group = OfferingFactory.create(expert=expert_create(time_zone="UTC"), capacity=3)
    room = services.group_room_publish(group.expert, group, _at(18))
    for offering in (_offering(), _offering(), _offering()):
        services.booking_reserve(client, offering, _at(9))
    with pytest.raises(RoomsError, match="You have 3 bookings waiting for payment"):
        services.group_seat_reserve(client, room.pk)
    assert not Seat.objects.filter(room=room).exists()
    assert _unpaid(client) == [(PRICE, "EUR", PaymentState.PENDING)] * 3


@pytest.mark.django_db
def test_the_booking_page_says_why_a_fourth_unpaid_booking_is_refused() -> None:
    client = UserFactory.create()
    for offering in (_offering(), _offering(), _offering()):
        services.booking_reserve(client, offering, _at(9))
    fourth = _offering()
    browser = Client()
    browser.force_login(client)
    response = browser.post(
        reverse("rooms:offering_book", args=[fourth.pk]), {"starts_at": _at(9).isoformat()}
    )
    assert response.status_code == 400
    assert "You have 3 bookings waiting for payment" in response.content.decode()
    assert Payment.objects.filter(payer=client).count() == 3


@pytest.mark.django_db(transaction=True)
def test_four_bookings_of_one_client_at_once_leave_three_unpaid_reservations() -> None:
    client = UserFactory.create()
    offerings = [_offering() for _ in range(4)]

    def lock_payments() -> None:
        with connection.cursor() as cursor:
            cursor.execute("LOCK TABLE billing_payment IN SHARE MODE")

    # No payment can be written until all four bookings wait at once (on the table lock, or
    # on each other): they are provably inside the booking together, past any check made
    # before the payment is written.
    with lock_held_until_waited_on(lock_payments, len(offerings)) as held:
        outcomes = race(
            [partial(services.booking_reserve, client, offering, _at(9)) for offering in offerings]
        )
    seen = held.seen

    assert seen, "the four bookings were never all waiting at once: they did not overlap"
    assert sorted(outcomes) == sorted(
        ["ok"] * 3
        + [
            "You have 3 bookings waiting for payment. Pay for one of them (or let it lapse: an "
            "unpaid booking is released after 10 minutes) before booking another."
        ]
    )
    assert _unpaid(client) == [(PRICE, "EUR", PaymentState.PENDING)] * 3
    assert Payment.objects.filter(payer=client).count() == 3
