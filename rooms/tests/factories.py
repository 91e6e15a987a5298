from __future__ import annotations

import datetime as dt

import factory

from accounts.models import ExpertStatus, User
from accounts.tests.factories import ExpertProfileFactory, UserFactory
from billing.gateways.local import TEST_CARD
from billing.services import payment_local_card
from rooms.models import AvailabilityRule, Offering, Pricing, Seat

# The "now" of the booking tests: a Tuesday morning, far from any DST change.
NOW = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def expert_create(time_zone: str = "Europe/Berlin", **user_fields: object) -> User:
    """An approved expert whose availability is kept in `time_zone`."""
    profile = ExpertProfileFactory.create(
        user=UserFactory.create(time_zone=time_zone, **user_fields),
        status=ExpertStatus.APPROVED,
        time_zone=time_zone,
    )
    return profile.user


def weekdays_available(
    expert: User, start: dt.time = dt.time(9), end: dt.time = dt.time(17), days: range = range(7)
) -> None:
    """Working hours on the given weekdays (default: every day 09:00–17:00 local)."""
    AvailabilityRule.objects.bulk_create(
        AvailabilityRule(expert=expert, weekday=day, start_time=start, end_time=end) for day in days
    )


class OfferingFactory(factory.django.DjangoModelFactory[Offering]):
    class Meta:
        model = Offering

    expert = factory.LazyFunction(expert_create)
    title = "Architecture review"
    length_minutes = 60
    pricing = Pricing.FIXED
    price_minor = 12000
    currency = "EUR"
    capacity = 1
    notice_minutes = 120
    buffer_before_minutes = 0
    buffer_after_minutes = 0
    horizon_days = 60
    late_cancel_fee_percent = 50
    no_show_fee_percent = 50


def seat_pay(seat: Seat, card_number: str = TEST_CARD) -> Seat:
    """Pay for a reserved seat the way a client does with the local provider's card form."""
    assert seat.payment_id is not None
    payment_local_card(seat.payment_id, card_number=card_number)
    seat.refresh_from_db()
    return seat
