from __future__ import annotations

import datetime as dt

import factory
import time_machine

from accounts.models import ExpertStatus, User
from accounts.tests.factories import ExpertProfileFactory, UserFactory
from billing.gateways.local import TEST_CARD
from billing.services import payment_local_card
from rooms import services
from rooms.models import AvailabilityRule, MediaLink, Offering, Presence, Pricing, Room, Seat

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


# A session six hours after NOW, for tests of what happens around and after a call.
CALL_START = dt.datetime(2026, 12, 1, 14, 0, tzinfo=dt.UTC)


def seat_booked(offering: Offering | None = None) -> Seat:
    """A client's paid seat in a 60-minute session at CALL_START, booked at NOW."""
    if offering is None:
        expert = expert_create(time_zone="UTC")
        weekdays_available(expert)
        offering = OfferingFactory.create(expert=expert)
    with time_machine.travel(NOW, tick=False):
        return seat_pay(services.booking_reserve(UserFactory.create(), offering, CALL_START))


def room_closed_after_a_call(seat: Seat) -> Room:
    """Both in from the start, media up for 2.5 minutes, then the expert ends it at +3 min."""

    def at(minutes: float) -> dt.datetime:
        return CALL_START + dt.timedelta(minutes=minutes)

    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(at(-1), tick=False):
        services.rooms_advance()
    for user in (room.expert, seat.client):
        Presence.objects.create(
            room=room, user=user, connection_id=f"c{user.pk}", opened_at=at(0),
            last_heartbeat_at=at(3),
        )  # fmt: skip
    with time_machine.travel(at(0), tick=False):
        services.room_mark_live(room.pk, at=at(0))
    MediaLink.objects.create(
        room=room, client=seat.client, reported_by=seat.client, started_at=at(0.5), ended_at=at(3)
    )
    with time_machine.travel(at(3), tick=False):
        services.room_end_by_expert(room.pk, room.expert)
    return Room.objects.get(pk=room.pk)
