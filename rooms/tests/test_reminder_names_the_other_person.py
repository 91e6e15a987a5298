"""The reminder names the other person: what the expert reads in their own reminder."""

from __future__ import annotations

import pytest

from accounts.models import OutboundEmail
from rooms import emails
from rooms.tests.factories import seat_booked

pytestmark = pytest.mark.django_db


def test_the_experts_reminder_does_not_say_the_session_is_with_themselves() -> None:
    """Issue 17, point 8: an expert's own emails said "with Erin Expert" — their own name.
    The reminder (now HTML too) still tells the expert their session is with themselves, in
    the text, the HTML and the calendar invitation's summary."""
    seat = seat_booked()
    emails.booking_reminder(seat, "15min")
    expert = seat.room.expert
    sent = OutboundEmail.objects.get(to=expert.email, key__startswith="reminder-15min:room")
    own = f"with {expert.display_name}"
    assert own not in sent.body
    assert own not in sent.html
    assert own not in sent.ics.replace("\r\n ", "")
