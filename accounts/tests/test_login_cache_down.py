"""Redis down (issue 16, E): allauth keeps its login rate limits in the cache, and a cache that
cannot be reached must not turn a sign-in into a 500. Rate limiting fails open while Redis is
away and comes back by itself when Redis does."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.core.cache import cache
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from accounts.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cache_at(settings: Settings, url: str) -> None:
    """The deployment's cache configuration, pointed at another Redis."""
    default = settings.CACHES["default"]
    # Retry a failed Redis at once in these tests, so recovery is seen without waiting.
    options = {**default.get("OPTIONS", {}), "RETRY_AFTER_SECONDS": 0}
    if default["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
        options.pop("RETRY_AFTER_SECONDS")
    settings.CACHES = {"default": {**default, "LOCATION": url, "OPTIONS": options}}


THROTTLED = "throttled"


def _login(client: Client, email: str, password: str = PASSWORD) -> int | str:
    """The status of a sign-in, or THROTTLED when allauth refused it for too many failures."""
    response = client.post(reverse("account_login"), {"login": email, "password": password})
    if response.status_code == 200 and b"Too many failed login attempts" in response.content:
        return THROTTLED
    return response.status_code


@pytest.fixture
def own_redis() -> Iterator[tuple[int, Any]]:
    """A Redis server of this test's own (the shared one must stay up for everyone else)."""
    port = _free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port)]
    command += ["--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: S603
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=port).ping()
                return process
            except redis.ConnectionError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    processes = [start()]
    yield port, lambda: processes.append(start())
    for process in processes:
        process.kill()
        process.wait()


def test_login_works_when_the_cache_redis_refuses_connections(
    client: Client, settings: Settings
) -> None:
    assert settings.CACHES["default"]["LOCATION"].startswith("redis://"), "runs on Redis"
    user = UserFactory.create()
    _cache_at(settings, f"redis://127.0.0.1:{_free_port()}/0")

    assert _login(client, user.email) == 302
    assert client.get(reverse("accounts:profile")).status_code == 200


def test_login_rate_limit_fails_open_while_redis_is_down_and_returns_with_it(
    client: Client, settings: Settings, own_redis: tuple[int, Any]
) -> None:
    port, restart = own_redis
    _cache_at(settings, f"redis://127.0.0.1:{port}/0")
    user = UserFactory.create()
    settings.ACCOUNT_RATE_LIMITS = {"login_failed": "3/m/ip"}
    from allauth.account import app_settings

    assert app_settings.RATE_LIMITS["login_failed"] == "3/m/ip"

    # Redis up: the limit is kept (three wrong passwords, then even the right one waits).
    for _attempt in range(3):
        assert _login(client, user.email, "wrong-password") == 200
    assert _login(client, user.email) == THROTTLED

    # Redis gone (and its memory of the failures with it): sign-in works, without a limit.
    subprocess.run(  # noqa: S603
        ["redis-cli", "-p", str(port), "shutdown", "nosave"],  # noqa: S607
        check=False,
        capture_output=True,
    )
    for _attempt in range(5):
        assert _login(client, user.email, "wrong-password") == 200
    assert _login(client, user.email) == 302
    client.post(reverse("account_logout"))

    # Redis back on the same address: limits count again, with no restart of anything.
    restart()
    assert cache.get("missing", "default") == "default"
    for _attempt in range(3):
        assert _login(client, user.email, "wrong-password") == 200
    assert _login(client, user.email) == THROTTLED
    assert settings.CACHES["default"]["LOCATION"].endswith(f":{port}/0")
    assert redis.Redis(port=port).keys("*allauth*"), "the limit lives in the new Redis"
