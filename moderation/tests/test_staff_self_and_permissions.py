"""Staff never decide their own case: a report they filed or that is about them, a dispute
of a session they were in. And a forged live-room address is a 404, not a crash."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import time_machine
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from accounts.models import User
from accounts.tests.factories import StaffFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from moderation import services
from moderation.models import Report, ReportState, StaffAction
from moderation.services import ModerationError, Outcome
from moderation.services.reports import report_file, report_resolve
from moderation.tests.helpers import records, seat_charged
from rooms.models import Room, Seat
from rooms.tests.factories import CALL_START

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _an_hour_after_the_call(settings: Settings) -> Iterator[None]:
    settings.PAYMENT_PROVIDER = "local"
    with time_machine.travel(CALL_START + dt.timedelta(hours=1), tick=False):
        yield


@pytest.fixture
def seat() -> Seat:
    return seat_charged()


def _made_staff(user: User) -> User:
    User.objects.filter(pk=user.pk).update(is_staff=True, is_superuser=True)
    return User.objects.get(pk=user.pk)


def test_staff_cannot_resolve_a_report_they_filed_or_that_is_about_them(seat: Seat) -> None:
    room = Room.objects.get(pk=seat.room_id)
    report = report_file(room.pk, seat.client, category="fraud", text="Ended early.")
    reporter, reported = _made_staff(seat.client), _made_staff(room.expert)

    for actor in (reporter, reported):
        with pytest.raises(ModerationError, match="another staff member resolves it"):
            report_resolve(report.pk, actor=actor, resolution="Nothing wrong here.")
    report.refresh_from_db()
    assert (report.state, report.resolved_by_id) == (ReportState.OPEN, None)
    assert not StaffAction.objects.exists()

    colleague = StaffFactory.create()
    report_resolve(report.pk, actor=colleague, resolution="Warned the expert.")
    assert Report.objects.get(pk=report.pk).state == ReportState.RESOLVED


@pytest.mark.parametrize("who", ["client", "expert"])
def test_staff_cannot_decide_a_dispute_of_a_session_they_were_in(seat: Seat, who: str) -> None:
    dispute = services.dispute_open(
        seat.pk, seat.client, reason="quality", text="The picture froze."
    )
    room = Room.objects.get(pk=seat.room_id)
    actor = _made_staff(seat.client if who == "client" else room.expert)
    before = records(seat)

    for outcome in (Outcome.REFUND_FULL, Outcome.REJECT):
        with pytest.raises(ModerationError, match="another staff member decides its dispute"):
            services.dispute_resolve(dispute.pk, actor=actor, outcome=outcome, note="Fine.")

    assert records(seat) == before


def test_a_live_room_address_that_is_not_a_number_is_not_found() -> None:
    staff = StaffFactory.create()
    browser = Client()
    login_with_mfa(browser, staff, totp_enable(staff))
    response = browser.get("/admin/moderation/liveroom/not-a-room/change/")
    assert response.status_code == 404
    assert browser.get(reverse("admin:moderation_liveroom_live", args=[999999])).status_code == 404
