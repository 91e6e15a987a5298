"""Reminders: HTML with a text alternative, a one-click unsubscribe, and the person's choice."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine
from django.core.mail import EmailMultiAlternatives
from django.test import Client
from pytest_django import DjangoCaptureOnCommitCallbacks

from accounts import services as accounts_services
from accounts.models import OutboundEmail, User
from accounts.tests.factories import UserFactory
from accounts.unsubscribe import reminders_unsubscribe_url
from rooms import services
from rooms.models import Offering, Seat
from rooms.tests.factories import seat_pay

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("frozen_now")]

SLOT = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)  # 50 h ahead
DAY_BEFORE = SLOT - dt.timedelta(hours=23, minutes=59)


@pytest.fixture
def seat(offering: Offering) -> Seat:
    seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
    return seat_pay(seat)


def _reminders() -> dict[int, OutboundEmail]:
    """The queued reminders, by recipient id."""
    emails = OutboundEmail.objects.filter(key__startswith="reminder-")
    by_address = {email.to: email for email in emails}
    return {user.pk: by_address[user.email] for user in User.objects.filter(email__in=by_address)}


def test_reminders_carry_a_one_click_unsubscribe_for_their_recipient(seat: Seat) -> None:
    with time_machine.travel(DAY_BEFORE, tick=False):
        assert services.reminders_queue() == 2
    reminders = _reminders()
    assert set(reminders) == {seat.client_id, seat.room.expert_id}
    for user_id, email in reminders.items():
        url = reminders_unsubscribe_url(user_id)
        assert email.headers == {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }
        assert url in email.body
        assert f'href="{url}"' in email.html
        assert "session reminders are on in your Parley account" in email.html


def test_booking_emails_other_than_reminders_have_no_unsubscribe(seat: Seat) -> None:
    others = OutboundEmail.objects.exclude(key__startswith="reminder-")
    assert others.count() >= 2  # the client's confirmation and the expert's notice
    for email in others:
        # Confirmations are rendered when sent; the row keeps what went out.
        assert accounts_services.email_send(email.pk)
        email.refresh_from_db()
        assert email.headers == {}
        assert "/reminders/off/" not in email.body
        assert email.html.startswith("<!DOCTYPE html>")


def test_reminder_is_sent_with_its_html_alternative_headers_and_invitation(
    seat: Seat,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[Any],
) -> None:
    with (
        time_machine.travel(DAY_BEFORE, tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.reminders_queue()
    sent = [message for message in mailoutbox if message.subject.startswith("Starting")]
    assert len(sent) == 2
    for message in sent:
        assert isinstance(message, EmailMultiAlternatives)
        assert [mimetype for _content, mimetype in message.alternatives] == ["text/html"]
        mime = message.message()
        assert mime["List-Unsubscribe"].startswith("<http")
        assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # The calendar invitation is still attached.
        assert [name for name, _content, _type in message.attachments] == ["invite.ics"]


def test_reminder_sweep_skips_a_person_who_turned_reminders_off(seat: Seat) -> None:
    accounts_services.user_reminders_off(seat.client_id)
    with time_machine.travel(DAY_BEFORE, tick=False):
        assert services.reminders_queue() == 1  # the expert's only
    assert set(_reminders()) == {seat.room.expert_id}
    # The client's confirmation was sent all the same (reminders are all that stop).
    assert OutboundEmail.objects.filter(key=f"booking-confirmed:{seat.pk}").exists()


def test_unsubscribing_with_the_reminders_link_stops_the_next_reminder(seat: Seat) -> None:
    with time_machine.travel(DAY_BEFORE, tick=False):
        services.reminders_queue()
    link = _reminders()[seat.client_id].headers["List-Unsubscribe"].strip("<>")
    path = link.split("://", 1)[1].split("/", 1)[1]
    response = Client(enforce_csrf_checks=True).post(f"/{path}", {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    with time_machine.travel(SLOT - dt.timedelta(minutes=14), tick=False):
        assert services.reminders_queue() == 1  # the expert's 15-minute reminder only


def test_canceling_after_turning_reminders_off_still_tells_the_client(seat: Seat) -> None:
    accounts_services.user_reminders_off(seat.client_id)
    services.seat_cancel(seat.pk, actor=seat.client)
    assert OutboundEmail.objects.filter(key=f"booking-canceled:{seat.pk}:client").exists()
