"""The booking pages as a person uses them: pick, confirm, manage; and the expert's forms."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import UserFactory
from rooms import services
from rooms.models import (
    AvailabilityOverride,
    AvailabilityRule,
    Offering,
    Room,
    Seat,
    SeatState,
)
from rooms.tests.factories import OfferingFactory, expert_create, seat_pay, weekdays_available

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_now")]

UTC = dt.UTC
SLOT = dt.datetime(2026, 12, 3, 10, 0, tzinfo=UTC)


@pytest.fixture
def offering() -> Offering:
    expert = expert_create(time_zone="Europe/Berlin")
    weekdays_available(expert)
    return OfferingFactory.create(expert=expert)


@pytest.fixture
def client_user() -> User:
    return UserFactory.create(time_zone="America/New_York")


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_slots_are_shown_in_the_viewers_zone_with_the_zone_named(
    offering: Offering, client_user: User
) -> None:
    page = _signed_in(client_user).get(reverse("rooms:offering_book", args=[offering.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "Times are in America/New_York." in html
    # 09:00 in Berlin is 03:00 in New York in December.
    assert '<span class="visually-hidden">Thursday 3 December, </span>03:00' in html
    assert "2026-12-03T08:00:00+00:00" in html


def test_booking_through_the_pages_ends_with_a_confirmed_seat(
    offering: Offering, client_user: User
) -> None:
    client = _signed_in(client_user)
    response = client.post(
        reverse("rooms:offering_book", args=[offering.pk]), {"starts_at": SLOT.isoformat()}
    )
    seat = Seat.objects.get(client=client_user)
    assert response["Location"] == reverse("rooms:seat_confirm", args=[seat.pk])
    page = client.get(response["Location"]).content.decode()
    assert "We hold this time for you" in page
    pay_url = reverse("billing:pay", args=[seat.payment_id])
    assert pay_url in page
    next_url = reverse("rooms:seat_confirm", args=[seat.pk])
    assert "4242" in client.get(pay_url, {"next": next_url}).content.decode()
    response = client.post(
        pay_url,
        {"number": "4242 4242 4242 4242", "expiry": "12/30", "cvc": "123", "next": next_url},
    )
    assert response["Location"] == next_url
    assert "confirmed and paid" in client.get(next_url).content.decode()
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    dashboard = client.get(reverse("rooms:dashboard")).content.decode()
    assert reverse("rooms:join", args=[seat.room_id]) in dashboard
    assert "Architecture review" in dashboard


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tomorrow at ten", "That time could not be read."),
        ("2026-12-03T10:00:00", "That time has no time zone."),
        ("2026-12-03T10:30:00+00:00", "outside the expert&#x27;s availability"),
    ],
)
def test_a_malformed_or_unoffered_time_is_refused_on_the_page(
    offering: Offering, client_user: User, value: str, message: str
) -> None:
    response = _signed_in(client_user).post(
        reverse("rooms:offering_book", args=[offering.pk]), {"starts_at": value}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not Room.objects.exists()


def test_a_taken_time_answers_409_with_the_nearest_free_times(
    offering: Offering, client_user: User
) -> None:
    services.booking_reserve(UserFactory.create(), offering, SLOT)
    response = _signed_in(client_user).post(
        reverse("rooms:offering_book", args=[offering.pk]), {"starts_at": SLOT.isoformat()}
    )
    assert response.status_code == 409
    html = response.content.decode()
    assert "This slot was just taken." in html
    assert "The nearest free times" in html


def test_anonymous_booking_is_sent_to_login(offering: Offering) -> None:
    response = Client().post(
        reverse("rooms:offering_book", args=[offering.pk]), {"starts_at": SLOT.isoformat()}
    )
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    assert not Room.objects.exists()


def test_the_join_link_refuses_someone_who_is_not_in_the_session(
    offering: Offering, client_user: User
) -> None:
    seat = seat_pay(services.booking_reserve(client_user, offering, SLOT))
    url = reverse("rooms:join", args=[seat.room_id])
    stranger = _signed_in(UserFactory.create()).get(url)
    assert stranger.status_code == 403
    assert "This link is for the expert and the clients booked into this session." in (
        stranger.content.decode()
    )
    anonymous = Client().get(url)
    assert anonymous["Location"] == f"{reverse('account_login')}?next={url}"
    assert _signed_in(client_user).get(url).status_code == 200
    assert _signed_in(offering.expert).get(url).status_code == 200


def test_someone_elses_booking_cannot_be_confirmed_or_canceled(
    offering: Offering, client_user: User
) -> None:
    seat = services.booking_reserve(client_user, offering, SLOT)
    other = _signed_in(UserFactory.create())
    assert other.get(reverse("rooms:seat_confirm", args=[seat.pk])).status_code == 403
    assert other.get(reverse("billing:pay", args=[seat.payment_id])).status_code == 403
    assert other.post(reverse("rooms:seat_cancel", args=[seat.pk])).status_code == 403
    seat.refresh_from_db()
    assert seat.state == SeatState.RESERVED


def test_the_cancel_page_says_what_canceling_costs(offering: Offering, client_user: User) -> None:
    seat = seat_pay(services.booking_reserve(client_user, offering, SLOT))
    client = _signed_in(client_user)
    assert (
        "Canceling now costs nothing."
        in client.get(reverse("rooms:seat_cancel", args=[seat.pk])).content.decode()
    )
    with time_machine.travel(SLOT - dt.timedelta(hours=2), tick=False):
        page = client.get(reverse("rooms:seat_cancel", args=[seat.pk])).content.decode()
    assert "late-cancellation fee of <strong>60.00 EUR</strong>" in page


def test_an_expert_creates_an_offering_with_a_price_in_minor_units() -> None:
    expert = expert_create()
    client = _signed_in(expert)
    form = {
        "title": "Code review",
        "description": "",
        "length_minutes": 30,
        "pricing": "fixed",
        "price": "49.50",
        "currency": "EUR",
        "capacity": 1,
        "notice_minutes": 120,
        "buffer_before_minutes": 0,
        "buffer_after_minutes": 10,
        "horizon_days": 60,
        "late_cancel_fee_percent": 50,
        "no_show_fee_percent": 50,
        "is_active": "on",
    }
    response = client.post(reverse("rooms:offering_new"), form)
    assert response.status_code == 302
    offering = Offering.objects.get(expert=expert)
    assert (offering.price_minor, offering.buffer_after_minutes) == (4950, 10)

    bad = client.post(reverse("rooms:offering_new"), {**form, "length_minutes": 5, "capacity": 9})
    assert bad.status_code == 200
    html = bad.content.decode()
    assert "Enter a value from 15 to 180." in html
    assert "Enter a value from 1 to 3." in html
    assert Offering.objects.count() == 1


def test_only_approved_experts_reach_the_expert_pages() -> None:
    client = _signed_in(UserFactory.create())
    response = client.get(reverse("rooms:expert_offerings"))
    assert response.status_code == 403
    assert "for approved experts" in response.content.decode()


def test_an_expert_sets_weekly_hours_and_a_day_off() -> None:
    expert = expert_create()
    client = _signed_in(expert)
    url = reverse("rooms:expert_availability")
    response = client.post(
        url,
        {
            "weekly-day_0": "09:00-12:00, 13:00-17:00",
            "weekly-day_2": "10:00-11:00",
            "weekly-submit": "1",
        },
    )
    assert response.status_code == 302
    assert AvailabilityRule.objects.filter(expert=expert).count() == 3

    bad = client.post(url, {"weekly-day_0": "9 to 5", "weekly-submit": "1"})
    assert bad.status_code == 400
    assert "“9 to 5” is not an interval like 09:00-12:00." in bad.content.decode()
    assert AvailabilityRule.objects.filter(expert=expert).count() == 3

    response = client.post(url, {"override-date": "2026-12-24", "override-kind": "day_off"})
    assert response.status_code == 302
    bad = client.post(url, {"override-date": "2026-12-26", "override-kind": "extra"})
    assert "Extra hours need a start and an end time." in bad.content.decode()
    assert AvailabilityOverride.objects.filter(expert=expert).count() == 1


def test_an_expert_publishes_a_group_session_in_their_own_zone() -> None:
    expert = expert_create(time_zone="Europe/Berlin")
    group = OfferingFactory.create(expert=expert, capacity=3)
    response = _signed_in(expert).post(
        reverse("rooms:group_session_publish", args=[group.pk]),
        {"starts_at": "2026-12-10T18:00"},
    )
    assert response.status_code == 302
    room = Room.objects.get(offering=group)
    assert room.starts_at == dt.datetime(2026, 12, 10, 17, 0, tzinfo=UTC)
    assert room.capacity == 3


def test_the_dashboard_says_who_canceled(offering: Offering, client_user: User) -> None:
    seat = seat_pay(services.booking_reserve(client_user, offering, SLOT))
    services.seat_cancel(seat.pk, actor=client_user)
    page = _signed_in(offering.expert).get(reverse("rooms:dashboard")).content.decode()
    assert "Canceled (by the client)" in page
