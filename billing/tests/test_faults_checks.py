"""Security (issue 16): with DEBUG off, the test-card provider is refused unless the deployment
opts in with LOCAL_PAYMENTS_ALLOWED=1. Checked in-process and on the real command lines."""

from __future__ import annotations

import socket

import pytest
from django.core.checks import run_checks
from django.core.exceptions import ImproperlyConfigured
from pytest_django import Settings

from billing.checks import LOCAL_PROVIDER_REFUSED, payment_provider_enforce
from config.tests.helpers import manage

# What a production deployment sets, minus any Stripe key.
PRODUCTION = {
    "SECRET_KEY": "k3Jx9-production-like-secret-Yv7Qw2Lm8Np4Rs6Tu1Vz0Ab5Cd3Ef7Gh9Ij2Kl4",
    "ALLOWED_HOSTS": "parley.example.com",
    "DATABASE_URL": "postgres://parley:secret@db.internal:5432/parley",
    "REDIS_URL": "redis://cache.internal:6379/0",
    "TURN_URLS": "turn:turn.example.com:3478",
    "TURN_SECRET": "coturn-shared-secret",
}


def _ids(settings: Settings) -> list[str]:
    return [message.id for message in run_checks() if message.id == LOCAL_PROVIDER_REFUSED]


def test_the_test_card_provider_with_debug_off_is_an_error_unless_opted_in(
    settings: Settings,
) -> None:
    settings.DEBUG = False
    settings.PAYMENT_PROVIDER = "local"
    settings.LOCAL_PAYMENTS_ALLOWED = False
    [error] = [m for m in run_checks() if m.id == LOCAL_PROVIDER_REFUSED]
    assert error.is_serious()
    assert "LOCAL_PAYMENTS_ALLOWED=1" in (error.hint or "")
    with pytest.raises(ImproperlyConfigured, match="billing.E001"):
        payment_provider_enforce()

    settings.LOCAL_PAYMENTS_ALLOWED = True
    assert _ids(settings) == []
    payment_provider_enforce()

    settings.LOCAL_PAYMENTS_ALLOWED = False
    settings.DEBUG = True
    assert _ids(settings) == []

    settings.DEBUG = False
    settings.PAYMENT_PROVIDER = "stripe"
    assert _ids(settings) == []


def test_check_deploy_refuses_a_production_without_a_stripe_key() -> None:
    result = manage("check", "--deploy", **PRODUCTION)
    assert result.returncode != 0
    assert LOCAL_PROVIDER_REFUSED in result.stderr
    assert "LOCAL_PAYMENTS_ALLOWED=1" in result.stderr


def test_check_deploy_accepts_the_test_card_provider_when_opted_in() -> None:
    result = manage("check", "--deploy", **PRODUCTION, LOCAL_PAYMENTS_ALLOWED="1")
    assert result.returncode == 0, result.stderr
    assert LOCAL_PROVIDER_REFUSED not in result.stderr + result.stdout


def test_runserver_refuses_to_start_a_production_without_a_stripe_key() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = manage("runserver", "--noreload", f"127.0.0.1:{port}", **PRODUCTION)
    assert result.returncode != 0
    assert LOCAL_PROVIDER_REFUSED in result.stderr
