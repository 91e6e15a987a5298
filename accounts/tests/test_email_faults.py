"""The outbox under faults (issue 16, F and the outbox-secrets finding): a mail server that never
answers, emails that can never be sent, content that does not fit, and sign-in links that must
not be readable by whoever can read the outbox."""

from __future__ import annotations

import datetime as dt
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.mail import EmailMessage
from django.db import connection
from django.test import Client
from django.urls import reverse
from pytest_django import DjangoCaptureOnCommitCallbacks, Settings

from accounts import selectors, services, tasks
from accounts.models import OutboundEmail
from accounts.tests.factories import PASSWORD, StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa

pytestmark = pytest.mark.django_db


@pytest.fixture
def silent_mail_server() -> Iterator[int]:
    """A mail server that accepts the TCP connection and then never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for peer in accepted:
        peer.close()
    server.close()


def _stored(key: str, **fields: Any) -> OutboundEmail:
    defaults: dict[str, Any] = {"to": f"{key}@example.test", "subject": f"About {key}"}
    return OutboundEmail.objects.create(key=key, body="Hello.", **{**defaults, **fields})


# --- A mail server that never answers ------------------------------------------------------


def test_email_sending_has_a_timeout_shorter_than_the_email_tasks_time_limit() -> None:
    soft, hard = django_settings.CELERY_QUEUE_TIME_LIMITS["email"]
    assert 0 < django_settings.EMAIL_TIMEOUT < soft < hard
    # A worker killed at the hard limit has let go before its lease ends: no second sender.
    assert django_settings.EMAIL_LEASE_SECONDS > hard


def test_a_mail_server_that_never_answers_times_out_and_the_task_ends(
    settings: Settings, silent_mail_server: int
) -> None:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", silent_mail_server
    settings.EMAIL_TIMEOUT = 1
    email = _stored("silent")

    started = time.monotonic()
    # smtplib reports the read that timed out as a lost connection (an OSError: the task's
    # retry, then parking, take it from there).
    with pytest.raises(OSError, match="timed out"):
        services.email_send(email.pk)
    assert time.monotonic() - started < 3

    email.refresh_from_db()
    assert email.sent_at is None and email.leased_until is None
    assert email.attempts == 1 and "timed out" in email.last_error


# --- Emails that can never be sent ---------------------------------------------------------


def test_an_email_with_a_header_breaking_subject_is_parked_and_never_retried(
    mailoutbox: list[EmailMessage],
) -> None:
    # Written before the outbox cleaned subjects (or by anything that bypasses it).
    email = _stored("bad-header", subject="Your session with Eve\r\nBcc: everyone@example.test")

    assert tasks.email_send_task.delay(email.pk).get() is False

    email.refresh_from_db()
    assert email.parked_at is not None and email.sent_at is None
    assert "BadHeaderError" in email.last_error and email.attempts == 1
    # Neither the sweep nor another task tries it again.
    assert selectors.email_unsent_ids(older_than=__import__("datetime").timedelta(0)) == []
    assert services.email_send(email.pk) is False
    email.refresh_from_db()
    assert email.attempts == 1 and mailoutbox == []


def test_an_email_that_keeps_failing_is_parked_after_the_maximum_attempts(
    settings: Settings,
) -> None:
    settings.EMAIL_BACKEND = "accounts.tests.test_email_outbox.RefusingEmailBackend"
    settings.EMAIL_MAX_ATTEMPTS = 3
    # Failing for longer than EMAIL_GIVE_UP_HOURS: not an outage that will pass.
    email = _stored("refused", created_at=django_now() - dt.timedelta(hours=25))

    for _attempt in range(2):
        with pytest.raises(OSError):
            services.email_send(email.pk)
    assert services.email_send(email.pk) is False

    email.refresh_from_db()
    assert email.parked_at is not None and email.attempts == 3
    assert email.last_error.startswith("Failed 3 times")
    assert services.email_send(email.pk) is False
    email.refresh_from_db()
    assert email.attempts == 3


def test_staff_see_parked_emails_in_admin_and_send_them_again(
    client: Client,
    settings: Settings,
    mailoutbox: list[EmailMessage],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    staff = StaffFactory.create()
    login_with_mfa(client, staff, totp_enable(staff))
    parked = _stored("parked", parked_at=django_now(), attempts=8, last_error="Failed 8 times")
    pending = _stored("pending")

    listing = client.get("/admin/accounts/outboundemail/?status=parked")
    assert listing.status_code == 200
    assert b"About parked" in listing.content and b"About pending" not in listing.content

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/accounts/outboundemail/",
            {"action": "send_again", "_selected_action": [parked.pk, pending.pk]},
        )
    assert response.status_code == 302
    parked.refresh_from_db()
    assert parked.sent_at is not None and parked.parked_at is None
    assert parked.unparked_by == staff and parked.unparked_at is not None
    pending.refresh_from_db()
    assert pending.unparked_by is None
    assert [message.subject for message in mailoutbox] == ["About parked"]


def test_a_mail_server_down_for_a_few_minutes_parks_nothing_and_the_sweep_sends_it_after(
    settings: Settings, mailoutbox: list[EmailMessage]
) -> None:
    settings.EMAIL_BACKEND = "accounts.tests.test_email_outbox.RefusingEmailBackend"
    email = _stored("outage", created_at=django_now() - dt.timedelta(minutes=3))
    # The task's retries and the minute sweep use up the attempts within minutes.
    for _attempt in range(django_settings.EMAIL_MAX_ATTEMPTS + 2):
        with pytest.raises(OSError):
            services.email_send(email.pk)
    email.refresh_from_db()
    assert email.parked_at is None and email.attempts == django_settings.EMAIL_MAX_ATTEMPTS + 2
    assert email.pk in selectors.email_unsent_ids()

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert services.email_send(email.pk) is True
    assert [message.subject for message in mailoutbox] == ["About outage"]


def django_now() -> Any:
    from django.utils import timezone

    return timezone.now()


# --- Content that must never fail the caller's write ---------------------------------------


def test_a_300_character_subject_is_stored_cut_with_an_ellipsis() -> None:
    subject = "Your session “" + "A very long title " * 15 + "” with " + "Bartholomew " * 3
    assert len(subject) > 300

    email, created = services.email_queue_rendered(
        key="long", to="ada@example.test", subject=subject, body="Hello."
    )

    assert created
    email.refresh_from_db()
    assert len(email.subject) == 200 and email.subject.endswith("…")
    assert email.subject.startswith("Your session “A very long title")
    if connection.vendor == "postgresql":
        assert OutboundEmail._meta.get_field("subject").max_length == 200


def test_header_breaking_characters_are_stripped_when_an_email_is_queued(
    mailoutbox: list[EmailMessage],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        email, _created = services.email_queue_rendered(
            key="crlf",
            to="ada@example.test\r\n",
            subject="Session with Eve\r\nBcc: all@example.test\x00",
            body="Hello.",
        )

    email.refresh_from_db()
    assert email.subject == "Session with Eve Bcc: all@example.test"
    assert [message.subject for message in mailoutbox] == [email.subject]
    assert mailoutbox[0].to == ["ada@example.test"]


@pytest.mark.parametrize("name", ["Eve\r\nBcc: x@example.test", "Tab\there", "Escape\x1b[31m"])
def test_control_characters_are_refused_in_a_display_name_at_signup_and_in_the_profile(
    client: Client, name: str
) -> None:
    response = client.post(
        reverse("account_signup"),
        {
            "email": "eve@example.test",
            "display_name": name,
            "time_zone": "UTC",
            "password1": "analytical-engine-1843",
            "password2": "analytical-engine-1843",
        },
    )
    assert response.status_code == 200
    assert b"control characters are not allowed" in response.content
    assert not OutboundEmail.objects.exists()

    user = UserFactory.create(display_name="Ada")
    client.force_login(user)
    response = client.post(reverse("accounts:profile"), {"display_name": name, "time_zone": "UTC"})
    assert response.status_code in (200, 400)
    assert b"control characters are not allowed" in response.content
    user.refresh_from_db()
    assert user.display_name == "Ada"


# --- Sign-in secrets in the outbox ---------------------------------------------------------


def _reset_link_requested(
    client: Client, captured: DjangoCaptureOnCommitCallbacks, *, execute: bool
) -> OutboundEmail:
    user = UserFactory.create(email="ada@example.test")
    assert user.check_password(PASSWORD)
    with captured(execute=execute):
        response = client.post(reverse("account_reset_password"), {"email": "ada@example.test"})
    assert response.status_code == 302
    return OutboundEmail.objects.get(to="ada@example.test")


RESET_LINK = re.compile(rb"/accounts/password/reset/key/[^/\s]+/")


def test_a_password_reset_link_is_never_stored_readable_and_gone_once_sent(
    client: Client,
    mailoutbox: list[EmailMessage],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    email = _reset_link_requested(client, django_capture_on_commit_callbacks, execute=False)
    # Pending: the row holds no link anyone could use.
    assert not RESET_LINK.search(email.body.encode())
    assert "reset" not in email.body.lower()

    assert services.email_send(email.pk) is True
    assert RESET_LINK.search(mailoutbox[0].body.encode()), "the person still gets the link"
    email.refresh_from_db()
    assert email.body == ""


def test_staff_reading_the_outbox_in_admin_never_see_a_sign_in_link(
    client: Client, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    email = _reset_link_requested(Client(), django_capture_on_commit_callbacks, execute=False)
    staff = StaffFactory.create()
    login_with_mfa(client, staff, totp_enable(staff))

    page = client.get(f"/admin/accounts/outboundemail/{email.pk}/change/")

    assert page.status_code == 200
    assert b"ada@example.test" in page.content
    assert not RESET_LINK.search(page.content)
    assert b"Hidden: it carries a sign-in link" in page.content


@pytest.mark.django_db
def test_sign_in_emails_queued_before_sealing_are_sealed_or_emptied_by_the_migration() -> None:
    from importlib import import_module

    from django.apps import apps

    from accounts.sealing import unseal

    link = "http://testserver/accounts/password/reset/key/3-abc-123/"
    pending = OutboundEmail.objects.create(
        key="allauth:password_reset_key:1", to="a@example.com", subject="Reset", body=link
    )
    sent = OutboundEmail.objects.create(
        key="allauth:password_reset_key:2",
        to="b@example.com",
        subject="Reset",
        body=link,
        sent_at=pending.created_at,
    )
    booking = OutboundEmail.objects.create(
        key="booking:1", to="c@example.com", subject="Booked", body="See you"
    )
    migration = import_module("accounts.migrations.0005_seal_signin_emails_queued_before")
    migration.seal_signin_emails(apps, None)

    pending.refresh_from_db()
    sent.refresh_from_db()
    booking.refresh_from_db()
    assert pending.sealed and link not in pending.body and unseal(pending.body) == link
    assert (sent.sealed, sent.body) == (True, "")
    assert (booking.sealed, booking.body) == (False, "See you")
