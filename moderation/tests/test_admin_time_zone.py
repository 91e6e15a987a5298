"""Staff's own pages name the zone their times are shown in: `|date` shows a time in the staff
member's zone, so a "UTC" label beside it would be wrong by their offset."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import StaffFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from moderation import services
from moderation.models import DisputeReason
from rooms import services as rooms
from rooms.models import Room
from rooms.tests.factories import CALL_START, room_closed_after_a_call, seat_booked

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> User:
    return StaffFactory.create(is_superuser=True, time_zone="America/Los_Angeles")


@pytest.fixture
def desk(staff: User) -> Client:
    secret = totp_enable(staff)
    browser = Client()
    with time_machine.travel(dt.datetime.now(dt.UTC), tick=True):
        login_with_mfa(browser, staff, secret)
    return browser


def test_the_live_room_page_names_the_staff_members_zone(desk: Client) -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(CALL_START - dt.timedelta(minutes=1), tick=False):
        rooms.rooms_advance()
    with time_machine.travel(CALL_START, tick=False):
        rooms.presence_open(room.pk, room.expert, connection_id="expert-socket")
    with time_machine.travel(CALL_START + dt.timedelta(minutes=2), tick=False):
        page = desk.get(reverse("admin:moderation_liveroom_live", args=[room.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    # 14:00 UTC is 06:00 in Los Angeles.
    assert "2026-12-01 06:00–07:00 (America/Los_Angeles)" in html
    assert "<th>Since (America/Los_Angeles)</th>" in html
    assert "<td>06:00:00</td>" in html
    assert "UTC" not in html


def test_the_dispute_decision_page_names_the_staff_members_zone(desk: Client) -> None:
    seat = seat_booked()
    room_closed_after_a_call(seat)
    with time_machine.travel(CALL_START + dt.timedelta(hours=1), tick=False):
        dispute = services.dispute_open(
            seat.pk, seat.client, reason=DisputeReason.QUALITY, text="The video froze."
        )
        page = desk.get(reverse("admin:moderation_dispute_decide", args=[dispute.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "(2026-12-01 06:00 America/Los_Angeles)" in html
    assert "Disputed on 2026-12-01 07:00 America/Los_Angeles (window closed" in html
    assert "UTC" not in html
