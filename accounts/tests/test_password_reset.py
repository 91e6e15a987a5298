from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_password_reset_by_email_link_then_login_with_the_new_password(
    client: Client, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    user = UserFactory.create()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("account_reset_password"), {"email": user.email.upper()})
    assert response.status_code == 302
    assert len(mailoutbox) == 1
    match = re.search(r"http://testserver(/accounts/password/reset/key/\S+/)", mailoutbox[0].body)
    assert match, mailoutbox[0].body

    # The key page redirects to a URL without the key (so it does not leak via Referer).
    form_url = client.get(match.group(1))["Location"]
    new = "a-much-better-passphrase-2026"
    mismatch = client.post(form_url, {"password1": new, "password2": new + "x"})
    assert "You must type the same password each time." in mismatch.content.decode()

    response = client.post(form_url, {"password1": new, "password2": new})
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password(new)
    assert (
        client.post(reverse("account_login"), {"login": user.email, "password": new}).status_code
        == 302
    )


def test_password_reset_for_an_unknown_address_does_not_reveal_it(
    client: Client, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("account_reset_password"), {"email": "nobody@example.test"})
    # Same answer as for a known address; the mailbox owner learns no account exists.
    assert response.status_code == 302
    assert response["Location"] == reverse("account_reset_password_done")
    assert len(mailoutbox) == 1
    assert "nobody@example.test" in mailoutbox[0].to


def test_password_reset_with_a_malformed_address_says_so(client: Client) -> None:
    response = client.post(reverse("account_reset_password"), {"email": "not an email"})
    assert response.status_code == 200
    assert "Enter a valid email address." in response.content.decode()
