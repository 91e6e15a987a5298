"""Emails a person reads, and the reminders they can stop: in real Chromium, against the whole
deployment. The reminder's HTML body is opened as a mail client shows it, its one-click
unsubscribe link followed without being signed in; the account page turns reminders off too."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from rooms.tests.browser.support import BASE_URL, Booked, Contexts, booked_session, stranger


@pytest.fixture
def site_url_here(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Links in emails queued by this process point at the deployment's Daphne."""
    from django.conf import settings

    monkeypatch.setattr(settings, "SITE_URL", BASE_URL)
    yield


def _booking_reminders(user_id: int) -> bool:
    from accounts.models import User

    return User.objects.get(pk=user_id).booking_reminders


def _reminder_for_client(booked: Booked) -> Any:
    """The day-before reminder of the booked seat, queued as the minute sweep queues it."""
    from accounts.models import OutboundEmail
    from rooms import emails
    from rooms.models import Seat

    seat = Seat.objects.select_related("room", "room__expert", "client").get(pk=booked.seat_id)
    assert emails.booking_reminder(seat, "24h") == 2
    return OutboundEmail.objects.get(key__startswith="reminder-24h:seat", to=booked.client.email)


@pytest.mark.usefixtures("site_url_here")
def test_the_reminders_html_body_renders_and_its_unsubscribe_link_stops_reminders(
    contexts: Contexts,
) -> None:
    booked = booked_session()
    reminder = _reminder_for_client(booked)
    unsubscribe = reminder.headers["List-Unsubscribe"].strip("<>")
    assert reminder.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # The HTML alternative, as a mail client shows it: the product's layout, the session,
    # the join button, and the footer that says why it came and how to stop it.
    page = contexts("mail client").new_page()
    page.set_content(reminder.html)
    expect(page.get_by_role("link", name="Parley", exact=True)).to_be_visible()
    expect(page.get_by_text("Your session starts in")).to_be_visible()
    join = page.get_by_role("link", name="Join from your browser")
    expect(join).to_be_visible()
    expect(join).to_have_attribute("href", f"{BASE_URL}/r/{booked.room_id}/")
    expect(page.get_by_text("session reminders are on in your Parley account")).to_be_visible()
    stop = page.get_by_role("link", name="Stop session reminders")
    expect(stop).to_have_attribute("href", unsubscribe)

    # Followed from the email, not signed in: a page that asks first, then a clear answer.
    stop.click()
    expect(page).to_have_url(unsubscribe)
    expect(page.get_by_role("heading", name="Stop session reminders")).to_be_visible()
    expect(page.get_by_text(f"{booked.client.email} gets a reminder")).to_be_visible()
    assert _booking_reminders(booked.client.id) is True  # opening the page changes nothing
    page.get_by_role("button", name="Stop reminders").click()
    expect(page.get_by_role("heading", name="Session reminders are off")).to_be_visible()
    expect(page.get_by_text("You still get an email when a session is booked")).to_be_visible()
    assert _booking_reminders(booked.client.id) is False
    assert _booking_reminders(booked.expert.id) is True

    # A link that was tampered with is refused in words, and changes nothing.
    signed = unsubscribe.rstrip("/")
    forged = signed[:-1] + ("A" if signed[-1] != "A" else "B") + "/"
    response = page.goto(forged)
    assert response is not None and response.status == 400
    expect(page.get_by_role("heading", name="This unsubscribe link is not valid")).to_be_visible()
    expect(page.get_by_text("Nothing was changed.")).to_be_visible()


def test_the_account_page_turns_reminders_off_and_on(contexts: Contexts) -> None:
    person = stranger()
    page = contexts("person", person).new_page()
    page.goto("/me/profile/")
    reminders = page.get_by_label("Email me session reminders")
    expect(reminders).to_be_checked()
    expect(page.get_by_text("Booking confirmations, changes and cancellations")).to_be_visible()
    reminders.uncheck()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Your profile is saved.")).to_be_visible()
    expect(page.get_by_label("Email me session reminders")).not_to_be_checked()
    assert _booking_reminders(person.id) is False

    page.get_by_label("Email me session reminders").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Your profile is saved.")).to_be_visible()
    expect(page.get_by_label("Email me session reminders")).to_be_checked()
    assert _booking_reminders(person.id) is True
