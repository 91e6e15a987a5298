"""Reports filed from the room page."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import UserFactory
from moderation.models import Report
from rooms.models import RoomEvent, Seat
from rooms.tests.factories import room_closed_after_a_call, seat_booked

pytestmark = pytest.mark.django_db


@pytest.fixture
def seat() -> Seat:
    return seat_booked()


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_client_reports_the_expert_after_the_call(seat: Seat) -> None:
    room = room_closed_after_a_call(seat)
    url = reverse("moderation:report", args=[room.pk])
    response = _signed_in(seat.client).post(
        url, {"category": "fraud", "text": "Ended early."}, follow=True
    )
    assert "Sent to staff. Thank you: they will look at your report." in response.content.decode()
    report = Report.objects.get()
    assert (report.reporter_id, report.about_id, report.category, report.state) == (
        seat.client_id,
        room.expert_id,
        "fraud",
        "open",
    )
    assert RoomEvent.objects.filter(room=room, kind="reported", actor=seat.client).exists()


def test_the_expert_of_a_private_session_reports_its_client(seat: Seat) -> None:
    room = room_closed_after_a_call(seat)
    url = reverse("moderation:report", args=[room.pk])
    _signed_in(room.expert).post(url, {"category": "harassment", "text": "Insults."})
    assert Report.objects.get().about_id == seat.client_id


def test_a_report_without_text_or_from_a_stranger_writes_nothing(seat: Seat) -> None:
    room = room_closed_after_a_call(seat)
    url = reverse("moderation:report", args=[room.pk])
    response = _signed_in(seat.client).post(url, {"category": "other", "text": ""}, follow=True)
    assert "The report was not sent" in response.content.decode()
    response = _signed_in(seat.client).post(url, {"category": "spam", "text": "x"}, follow=True)
    assert "The report was not sent" in response.content.decode()
    # A stranger learns nothing about the session, not even that it exists.
    response = _signed_in(UserFactory.create()).post(url, {"category": "other", "text": "Hello"})
    assert response.status_code == 404
    assert not Report.objects.exists()
