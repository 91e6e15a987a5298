"""An email can never undo a payment (issue 16, F): a confirmation's subject is built from the
offering's title (up to 120 characters) and the expert's name (up to 80), longer than the
outbox's 200-character column. On PostgreSQL that insert failed inside the payment's
authorization and rolled it back: a 500 on the pay page, the card held, the seat unconfirmed."""

from __future__ import annotations

import pytest

from accounts.models import OutboundEmail
from billing.models import PaymentState
from rooms.models import SeatState
from rooms.tests.factories import OfferingFactory, expert_create, seat_booked, weekdays_available

pytestmark = pytest.mark.django_db


def test_a_booking_whose_confirmation_subject_is_too_long_is_still_paid_and_confirmed() -> None:
    expert = expert_create(time_zone="UTC", display_name="Bartholomew " * 5 + "Xenakis-Ortega")
    weekdays_available(expert)
    title = "A very thorough architecture review of distributed systems " * 2
    offering = OfferingFactory.create(expert=expert, title=title[:120])
    assert len(f"Booked: {offering.title} with {expert.display_name}") > 200

    seat = seat_booked(offering)

    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    assert seat.payment is not None and seat.payment.state == PaymentState.AUTHORIZED
    email = OutboundEmail.objects.get(key=f"booking-confirmed:{seat.pk}")
    assert len(email.subject) == 200 and email.subject.endswith("…")
    assert email.subject.startswith("Booked: A very thorough architecture review")
