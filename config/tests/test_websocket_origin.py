"""The WebSocket Origin check compares scheme, host and port (issue 16, security, low): a page
at http://our-host:8080 or https://another-port is another site, and must not open a socket that
carries our session cookie."""

from __future__ import annotations

from typing import Any

import pytest
from pytest_django import Settings

from config.websocket import origin_allowed


def _scope(origin: str | None, host: str | None = "testserver", **extra: Any) -> dict[str, Any]:
    headers = []
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    if host is not None:
        headers.append((b"host", host.encode()))
    return {"type": "websocket", "scheme": "ws", "headers": headers, **extra}


@pytest.fixture(autouse=True)
def _site(settings: Settings) -> None:
    settings.ALLOWED_HOSTS = ["testserver", "parley.example"]
    settings.SITE_URL = "https://parley.example"
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.parley-preview.example"]


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://testserver", "testserver", "ws"),
        ("http://testserver:8011", "testserver:8011", "ws"),
        ("https://testserver", "testserver", "wss"),
        ("http://TestServer", None, "ws"),  # in-process clients send no Host
        ("https://parley.example", "10.0.0.5:8000", "ws"),  # SITE_URL, behind a TLS proxy
        ("https://pr-12.parley-preview.example", "10.0.0.5:8000", "ws"),
    ],
)
def test_our_own_origins_are_allowed(origin: str, host: str | None, scheme: str) -> None:
    assert origin_allowed(_scope(origin, host, scheme=scheme))


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("https://testserver", "testserver", "ws"),  # scheme differs
        ("http://testserver", "testserver", "wss"),
        ("http://testserver:8080", "testserver", "ws"),  # port differs
        ("http://testserver", "testserver:8011", "ws"),
        ("http://testserver:8080", None, "ws"),
        ("http://parley.example", "10.0.0.5:8000", "ws"),  # SITE_URL's host, not its scheme
        ("https://parley.example:8443", "10.0.0.5:8000", "ws"),
        ("https://evil.example", "evil.example", "ws"),  # not in ALLOWED_HOSTS
        ("https://parley-preview.example.evil.test", "x", "ws"),
        ("null", "testserver", "ws"),
        ("ftp://testserver", "testserver", "ws"),
        (None, "testserver", "ws"),
    ],
)
def test_other_origins_are_refused(origin: str | None, host: str | None, scheme: str) -> None:
    assert not origin_allowed(_scope(origin, host, scheme=scheme))


def test_a_trusted_forwarded_proto_makes_the_socket_secure(settings: Settings) -> None:
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    scope = _scope("https://testserver", "testserver")
    scope["headers"].append((b"x-forwarded-proto", b"https"))
    assert origin_allowed(scope)
    assert not origin_allowed(_scope("https://testserver", "testserver"))


@pytest.mark.parametrize(
    ("origin", "host", "allowed_hosts"),
    [
        # An IPv6 literal is written with brackets in ALLOWED_HOSTS and in Host, as Django's
        # requests check it; a fully qualified name may end with a dot.
        ("http://[::1]:8000", "[::1]:8000", ["[::1]"]),
        ("http://parley.example.", "parley.example.", ["parley.example"]),
    ],
)
def test_ipv6_hosts_and_fully_qualified_names_are_our_own_origins(
    settings: Settings, origin: str, host: str, allowed_hosts: list[str]
) -> None:
    settings.ALLOWED_HOSTS = allowed_hosts
    assert origin_allowed(_scope(origin, host))
    # Still the same site only on the same port.
    assert not origin_allowed(_scope(f"{origin.removesuffix(':8000')}:8080", host))
