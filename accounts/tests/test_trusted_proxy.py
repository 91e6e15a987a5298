"""Behind a load balancer every request comes from the balancer's address (issue 16, security):
without the trusted-proxy setting, ten failed logins by anyone lock everyone out. With it, the
client's own address (from X-Forwarded-For, as many hops from the right as there are proxies)
is what login limits and POST limits count; without it the header is ignored, so a client
cannot choose its address."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from accounts.models import User
from accounts.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
BALANCER = "10.0.0.2"


def _behind_the_balancer(client_address: str) -> Client:
    # The balancer appends the address it saw; a client may have written anything before it.
    return Client(REMOTE_ADDR=BALANCER, HTTP_X_FORWARDED_FOR=f"6.6.6.6, {client_address}")


def _login(client: Client, user: User, password: str) -> str:
    response = client.post(reverse("account_login"), {"login": user.email, "password": password})
    if b"Too many failed login attempts" in response.content:
        return "throttled"
    return "in" if response.status_code == 302 else "refused"


def _three_failures_then_another_client_logs_in(settings: Settings) -> str:
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "3/m/ip"}
    attacker, victim = UserFactory.create(), UserFactory.create()
    guesser = _behind_the_balancer("203.0.113.1")
    assert [_login(guesser, attacker, "wrong") for _ in range(3)] == ["refused"] * 3
    assert _login(guesser, attacker, PASSWORD) == "throttled"
    return _login(_behind_the_balancer("198.51.100.2"), victim, PASSWORD)


def test_with_one_trusted_proxy_two_clients_are_limited_separately(settings: Settings) -> None:
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    assert _three_failures_then_another_client_logs_in(settings) == "in"


def test_without_the_setting_the_forwarded_header_is_ignored(settings: Settings) -> None:
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 0
    # Everyone is the balancer: the header cannot be used to pick a fresh address.
    assert _three_failures_then_another_client_logs_in(settings) == "throttled"


def test_post_limits_count_the_forwarded_client_when_the_proxy_is_trusted(
    settings: Settings,
) -> None:
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    settings.POST_RATE_LIMITS = {"report:user": "100/h", "report:ip": "2/h"}
    url = reverse("moderation:report", args=[999_999])

    def post(client_address: str) -> int:
        client = _behind_the_balancer(client_address)
        client.force_login(UserFactory.create())
        return client.post(url).status_code

    assert [post("203.0.113.1") for _ in range(3)] == [404, 404, 429]
    assert post("198.51.100.2") == 404


@pytest.mark.parametrize(
    ("env", "count", "header"),
    [
        ({}, "0", "None"),
        ({"TRUSTED_PROXY_COUNT": "1"}, "1", "None"),
        ({"TRUSTED_CLIENT_IP_HEADER": "X-Real-IP"}, "0", "X-Real-IP"),
    ],
)
def test_the_trusted_proxy_is_configured_from_the_environment(
    env: dict[str, str], count: str, header: str
) -> None:
    code = (
        "from django.conf import settings as s; "
        "print(s.ALLAUTH_TRUSTED_PROXY_COUNT, s.ALLAUTH_TRUSTED_CLIENT_IP_HEADER)"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "PARLEY_VAR_DIR": os.environ["PARLEY_VAR_DIR"],
            "DEBUG": "1",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].split() == [count, header]
