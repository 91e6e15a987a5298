from __future__ import annotations

import re
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

GOOD = {
    "email": "ada@example.test",
    "display_name": "Ada Lovelace",
    "time_zone": "Europe/London",
    "password1": "analytical-engine-1843",
    "password2": "analytical-engine-1843",
}


def test_signup_then_verification_email_then_login(
    client: Client, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("account_signup"), GOOD)
    assert response.status_code == 302

    user = User.objects.get(email="ada@example.test")
    assert (user.display_name, user.time_zone) == ("Ada Lovelace", "Europe/London")
    assert not EmailAddress.objects.get(user=user).verified

    assert len(mailoutbox) == 1
    assert mailoutbox[0].to == ["ada@example.test"]
    match = re.search(r"http://testserver(/accounts/confirm-email/[^/\s]+/)", mailoutbox[0].body)
    assert match, mailoutbox[0].body
    confirm_url = match.group(1)
    assert client.get(confirm_url).status_code == 200
    assert client.post(confirm_url).status_code == 302
    assert EmailAddress.objects.get(user=user).verified

    client.post(reverse("account_logout"))
    response = client.post(
        reverse("account_login"),
        {"login": "ADA@example.test", "password": "analytical-engine-1843"},
    )
    assert response.status_code == 302
    assert client.get(reverse("accounts:profile")).status_code == 200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"password2": "something-else-entirely"}, "You must type the same password each time."),
        ({"email": "not-an-email"}, "Enter a valid email address."),
        ({"display_name": "   "}, "This field is required."),
        ({"time_zone": "Mars/Olympus_Mons"}, "Select a valid choice."),
        ({"password1": "123", "password2": "123"}, "This password is too short."),
    ],
)
def test_signup_with_bad_input_says_what_is_wrong_and_writes_nothing(
    client: Client, change: dict[str, str], message: str
) -> None:
    response = client.post(reverse("account_signup"), {**GOOD, **change})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not User.objects.exists()
    assert not mail.outbox


def test_signup_with_an_email_that_exists_in_other_case_is_refused(client: Client) -> None:
    UserFactory.create(email="ada@example.test")
    response = client.post(reverse("account_signup"), {**GOOD, "email": "Ada@Example.test"})
    assert response.status_code == 200
    assert "A user is already registered with this email address." in response.content.decode()
    assert User.objects.count() == 1


def test_login_with_a_wrong_password_says_so(client: Client) -> None:
    user = UserFactory.create()
    response = client.post(reverse("account_login"), {"login": user.email, "password": "nope"})
    assert response.status_code == 200
    assert "The email address and/or password you specified are not correct." in (
        response.content.decode()
    )
