"""Small helpers for tests that sign people in the way the product does."""

from __future__ import annotations

from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import PASSWORD


def totp_code(secret: str, offset: int = 0) -> str:
    """The code an authenticator app shows now (offset in 30-second steps)."""
    counter = int(timezone.now().timestamp()) // 30 + offset
    return str(format_hotp_value(hotp_value(secret, counter)))


def login_with_mfa(client: Client, user: User, secret: str) -> None:
    """Password, then the TOTP step: a session that admin accepts."""
    response = client.post(reverse("account_login"), {"login": user.email, "password": PASSWORD})
    assert response.status_code == 302, response.content
    assert response["Location"] == reverse("mfa_authenticate")
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert response.status_code == 302, response.content
