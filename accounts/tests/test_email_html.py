"""Emails are HTML with a text alternative on one layout; reminders can be stopped in one click."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core import signing
from django.core.mail import EmailMultiAlternatives
from django.test import Client
from django.urls import reverse
from pytest_django import DjangoCaptureOnCommitCallbacks

from accounts import services
from accounts.models import ExpertStatus, OutboundEmail
from accounts.sealing import unseal
from accounts.tests.factories import ExpertProfileFactory, UserFactory
from accounts.unsubscribe import (
    UnsubscribeLinkInvalid,
    reminders_unsubscribe_headers,
    reminders_unsubscribe_token,
    reminders_unsubscribe_url,
    reminders_unsubscribe_user_id,
)

pytestmark = pytest.mark.django_db

TEMPLATES = Path(settings.BASE_DIR) / "templates"
# allauth's emails that Parley's settings can send (no login codes, no change notifications).
ALLAUTH_SENT = [
    "email_confirmation",
    "email_confirmation_signup",
    "password_reset_key",
    "unknown_account",
    "account_already_exists",
]


def _html(message: Any) -> str:
    assert isinstance(message, EmailMultiAlternatives)
    htmls = [content for content, mimetype in message.alternatives if mimetype == "text/html"]
    assert len(htmls) == 1, message.alternatives
    return str(htmls[0])


# --- HTML with a text alternative ----------------------------------------------------------


def test_queued_email_is_sent_as_text_with_an_html_alternative_on_the_base_layout(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[Any],
) -> None:
    profile = ExpertProfileFactory.create(
        user=UserFactory.create(display_name="Ada <b>Lovelace</b>"),
        slug="ada-lovelace",
        status=ExpertStatus.APPROVED,
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.email_queue(
            key="expert-decision:1",
            to=profile.user.email,
            subject="You are approved as a Parley expert",
            template="accounts/email/expert_approved.txt",
            context={"profile": profile},
        )
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    # The text body stays what it was: plain, unescaped.
    assert message.content_subtype == "plain"
    assert "Hello Ada <b>Lovelace</b>," in message.body
    assert "<!DOCTYPE html>" not in message.body
    html = _html(message)
    assert html.startswith("<!DOCTYPE html>")
    assert "Hello Ada &lt;b&gt;Lovelace&lt;/b&gt;," in html  # what a person typed is escaped
    assert f'href="{settings.SITE_URL}/experts/ada-lovelace/"' in html
    assert "You get this email because you applied to be an expert on Parley." in html
    stored = OutboundEmail.objects.get()
    assert stored.html == html


def test_email_template_must_be_the_text_version() -> None:
    with pytest.raises(ValueError, match=r"ending in \.txt"):
        services.email_render("accounts/email/expert_approved.html", {})


def test_email_without_html_template_goes_as_text_only(
    tmp_path: Path, settings: Any, mailoutbox: list[Any]
) -> None:
    (tmp_path / "only_text.txt").write_text("Just text.")
    settings.TEMPLATES = [
        {**settings.TEMPLATES[0], "DIRS": [tmp_path, *settings.TEMPLATES[0]["DIRS"]]}
    ]
    body, html = services.email_render("only_text.txt", {})
    assert (body, html) == ("Just text.", "")
    email, _ = services.email_queue_rendered(key="k", to="a@example.test", subject="S", body=body)
    assert services.email_send(email.pk)
    assert mailoutbox[0].body == "Just text."
    assert mailoutbox[0].alternatives == []


def test_every_email_text_template_has_an_html_sibling_on_the_base_layout() -> None:
    """The convention every email follows: <app>/email/<name>.txt and <name>.html, the HTML
    extending email/base.html (allauth's through account/email/base_message.html)."""
    texts = [
        path
        for path in TEMPLATES.glob("*/email/*.txt")
        if path.parent.parent.name != "account"  # allauth's: checked below by name
    ]
    assert len(texts) >= 10
    missing = [str(path) for path in texts if not path.with_suffix(".html").exists()]
    assert missing == []
    for path in texts:
        assert '{% extends "email/base.html" %}' in path.with_suffix(".html").read_text(), path
    account = TEMPLATES / "account" / "email"
    assert '{% extends "email/base.html" %}' in (account / "base_message.html").read_text()
    for prefix in ALLAUTH_SENT:
        assert (account / f"{prefix}_message.html").exists(), prefix


def test_email_send_falls_back_to_text_for_a_row_without_html(mailoutbox: list[Any]) -> None:
    # Rows queued before emails had HTML are still sent, as text.
    email = OutboundEmail.objects.create(key="old", to="a@example.test", subject="S", body="B")
    assert services.email_send(email.pk)
    assert mailoutbox[0].body == "B"
    assert mailoutbox[0].alternatives == []


# --- Sealed bodies: the HTML too -----------------------------------------------------------


def test_password_reset_email_has_html_sealed_until_sent_and_emptied_after(
    client: Client,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[Any],
) -> None:
    user = UserFactory.create(email="ada@example.test")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        client.post(reverse("account_reset_password"), {"email": user.email})
    stored = OutboundEmail.objects.get()
    assert stored.sealed
    assert "password/reset/key" not in stored.html  # sealed at rest, like the body
    opened = unseal(stored.html)
    assert opened.startswith("<!DOCTYPE html>")
    assert "Choose a new password" in opened
    for callback in callbacks:
        callback()
    assert len(mailoutbox) == 1
    link = re.search(r"http://testserver/accounts/password/reset/key/\S+/", mailoutbox[0].body)
    assert link, mailoutbox[0].body
    assert f'href="{link.group(0)}"' in _html(mailoutbox[0])
    stored.refresh_from_db()
    assert (stored.body, stored.html) == ("", "")


def test_signup_verification_email_has_an_html_alternative(
    client: Client,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[Any],
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("account_signup"),
            {
                "email": "new@example.test",
                "display_name": "New Person",
                "time_zone": "Europe/Berlin",
                "password1": "correct-horse-battery-staple",
                "password2": "correct-horse-battery-staple",
            },
        )
    assert response.status_code == 302, response.content
    assert len(mailoutbox) == 1
    html = _html(mailoutbox[0])
    assert "Confirm your email address" in html
    assert "/accounts/confirm-email/" in html
    assert "new@example.test" in html  # the footer says why it came


# --- Headers -------------------------------------------------------------------------------


def test_headers_are_stored_with_the_email_one_line_each_and_sent(mailoutbox: list[Any]) -> None:
    email, _ = services.email_queue_rendered(
        key="k",
        to="a@example.test",
        subject="S",
        body="B",
        headers={"List-Unsubscribe": "<https://x.test/off/1/>\r\nBcc: evil@x.test"},
    )
    assert email.headers == {"List-Unsubscribe": "<https://x.test/off/1/> Bcc: evil@x.test"}
    assert services.email_send(email.pk)
    message = mailoutbox[0]
    assert message.extra_headers == {"List-Unsubscribe": "<https://x.test/off/1/> Bcc: evil@x.test"}
    assert "Bcc" not in message.message()  # no header was smuggled in
    assert message.message()["List-Unsubscribe"] == "<https://x.test/off/1/> Bcc: evil@x.test"


def test_email_without_headers_has_no_unsubscribe(mailoutbox: list[Any]) -> None:
    email, _ = services.email_queue_rendered(key="k", to="a@example.test", subject="S", body="B")
    assert services.email_send(email.pk)
    assert mailoutbox[0].message()["List-Unsubscribe"] is None


# --- The unsubscribe token -----------------------------------------------------------------


def test_unsubscribe_token_round_trips_to_its_user() -> None:
    assert reminders_unsubscribe_user_id(reminders_unsubscribe_token(42)) == 42
    assert reminders_unsubscribe_token(42) != reminders_unsubscribe_token(43)


@pytest.mark.parametrize(
    "forge",
    [
        lambda: reminders_unsubscribe_token(42).replace("42:", "43:"),  # another user's id
        lambda: reminders_unsubscribe_token(42)[:-2],  # cut off
        lambda: "42",  # no signature
        lambda: signing.Signer().sign("42"),  # signed, for another purpose
        lambda: signing.Signer(key="not-the-secret-key", salt="x").sign("42"),
        lambda: signing.Signer(salt="parley.accounts.reminders-unsubscribe").sign("x"),
    ],
    ids=["other-user", "cut-off", "unsigned", "other-salt", "other-key", "not-an-id"],
)
def test_forged_unsubscribe_token_is_refused(forge: Any) -> None:
    with pytest.raises(UnsubscribeLinkInvalid):
        reminders_unsubscribe_user_id(forge())


def test_unsubscribe_headers_follow_rfc_8058() -> None:
    headers = reminders_unsubscribe_headers(42)
    url = reminders_unsubscribe_url(42)
    assert url.startswith(settings.SITE_URL + "/reminders/off/")
    assert headers == {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


# --- The unsubscribe page ------------------------------------------------------------------


def _path(user_id: int) -> str:
    return reverse("accounts:reminders_unsubscribe", args=[reminders_unsubscribe_token(user_id)])


def test_unsubscribe_page_asks_first_and_changes_nothing_on_get(client: Client) -> None:
    user = UserFactory.create(email="ada@example.test")
    response = client.get(_path(user.pk))
    assert response.status_code == 200
    page = response.content.decode()
    assert "Stop session reminders" in page
    assert "ada@example.test gets a reminder" in page
    user.refresh_from_db()
    assert user.booking_reminders is True


def test_one_click_post_without_login_or_csrf_turns_reminders_off() -> None:
    # A mail client's RFC 8058 POST: no session, no CSRF token, the RFC's body.
    client = Client(enforce_csrf_checks=True)
    user = UserFactory.create()
    other = UserFactory.create()
    response = client.post(_path(user.pk), {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200
    assert "Session reminders are off" in response.content.decode()
    user.refresh_from_db()
    other.refresh_from_db()
    assert (user.booking_reminders, other.booking_reminders) == (False, True)
    # A second click (or the mail client retrying) is fine and changes nothing.
    assert client.post(_path(user.pk)).status_code == 200
    assert "already off" in client.get(_path(user.pk)).content.decode()


@pytest.mark.parametrize("method", ["get", "post"])
def test_forged_unsubscribe_link_says_so_and_changes_nothing(client: Client, method: str) -> None:
    user = UserFactory.create()
    signed = reminders_unsubscribe_token(user.pk)
    forged = signed[:-1] + ("A" if signed[-1] != "A" else "B")
    url = reverse("accounts:reminders_unsubscribe", args=[forged])
    response = getattr(client, method)(url)
    assert response.status_code == 400
    assert "This unsubscribe link is not valid" in response.content.decode()
    assert "Nothing was changed" in response.content.decode()
    user.refresh_from_db()
    assert user.booking_reminders is True


def test_unsubscribe_link_of_a_deleted_account_is_refused(client: Client) -> None:
    user = UserFactory.create()
    path = _path(user.pk)
    user.delete()
    assert client.post(path).status_code == 400


def test_reminders_off_service_reports_whether_it_changed_anything() -> None:
    user = UserFactory.create()
    assert services.user_reminders_off(user.pk) is True
    assert services.user_reminders_off(user.pk) is False


# --- The preference in the account ---------------------------------------------------------


def test_profile_page_turns_reminders_off_and_on(client: Client) -> None:
    user = UserFactory.create(display_name="Ada", time_zone="UTC")
    client.force_login(user)
    page = client.get(reverse("accounts:profile")).content.decode()
    assert "Email me session reminders" in page
    fields = {"display_name": "Ada", "time_zone": "UTC"}
    # An unticked box is not sent: that is "off".
    assert client.post(reverse("accounts:profile"), fields).status_code == 302
    user.refresh_from_db()
    assert user.booking_reminders is False
    client.post(reverse("accounts:profile"), {**fields, "booking_reminders": "on"})
    user.refresh_from_db()
    assert user.booking_reminders is True


def test_signup_leaves_reminders_on(client: Client) -> None:
    user = UserFactory.create(booking_reminders=True)
    services.user_profile_update(user, display_name="New", time_zone="UTC")
    user.refresh_from_db()
    assert user.booking_reminders is True
