"""Fixtures for tests that talk to Stripe: localstripe (a real HTTP server speaking Stripe's API,
started on loopback once per session) and settings that point the stripe gateway at it. A
pytest plugin: the root conftest.py loads it for every app."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import stripe
from pytest_django import Settings

ROOT = Path(__file__).resolve().parents[2]
LOCALSTRIPE_PYTHON = ROOT / ".venv-localstripe" / "bin" / "python"
WEBHOOK_SECRET = "whsec_parley_tests"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def localstripe() -> Iterator[str]:
    """The base URL of a localstripe server of this test session (scripts/localstripe.sh
    installs it; `make test` runs that first)."""
    if not LOCALSTRIPE_PYTHON.exists():
        subprocess.run([str(ROOT / "scripts" / "localstripe.sh")], check=True)  # noqa: S603
    port = _free_port()
    process = subprocess.Popen(  # noqa: S603
        [str(LOCALSTRIPE_PYTHON), str(ROOT / "scripts" / "localstripe-serve.py"), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _, err = process.communicate()
                raise RuntimeError(f"localstripe did not start: {err.decode()[-2000:]}") from None
            time.sleep(0.1)
    yield base
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def stripe_settings(localstripe: str, settings: Settings) -> Settings:
    """Payments go to Stripe (localstripe) for the test."""
    settings.PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_parley"
    settings.STRIPE_PUBLISHABLE_KEY = "pk_test_parley"
    settings.STRIPE_API_BASE = localstripe
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return settings


@pytest.fixture
def stripe_api(stripe_settings: Settings) -> stripe.StripeClient:
    """A client for doing what the browser (Stripe.js) and Stripe's dashboard do in tests."""
    return stripe.StripeClient(
        "sk_test_parley", base_addresses={"api": stripe_settings.STRIPE_API_BASE}
    )


def card_method(api: stripe.StripeClient, number: str = "4242424242424242") -> str:
    method = api.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2034, "cvc": "123"},
        }
    )
    return str(method.id)


def browser_confirms(
    api: stripe.StripeClient, intent_id: str, number: str = "4242424242424242"
) -> None:
    """What Stripe.js does on the pay page: attach the card to the PaymentIntent and confirm.

    localstripe cannot take the card in the confirm call itself, so it is set first."""
    api.v1.payment_intents.update(intent_id, params={"payment_method": card_method(api, number)})
    api.v1.payment_intents.confirm(intent_id)
