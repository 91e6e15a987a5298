"""The stripe gateway and billing's services against localstripe: real HTTP, the real stripe
SDK, a fake Stripe that keeps state. Connect (accounts, links, transfers), which localstripe
does not have, is checked at the request level with a recording HTTP client.

What the browser does (Stripe.js confirming the card) is done here with `stripe_api`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import stripe
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import Settings
from pytest_django.live_server_helper import LiveServer
from stripe._http_client import HTTPClient

import billing.gateways.stripe as stripe_module
from accounts.models import OutboundEmail, User
from accounts.tests.factories import UserFactory
from billing import services
from billing.errors import PaymentRefused
from billing.gateways.base import Intent, ProviderUnavailable
from billing.gateways.stripe import StripeGateway, stripe_client
from billing.models import (
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
    PayoutAccount,
    Settlement,
    WebhookEvent,
)
from billing.tests.localstripe import WEBHOOK_SECRET, browser_confirms, card_method

GOOD_CARD = "4242424242424242"
# localstripe refuses this card when it is attached to a customer (saving it).
DECLINED_ON_ATTACH = "4000000000000002"
# Attaching succeeds, every charge is declined: Stripe's "saved card that later fails".
DECLINED_ON_CHARGE = "4000000000000341"


# --- Helpers ---------------------------------------------------------------------------------


def _payment_open(*, amount_minor: int = 1000, hold_in: timedelta | None = None) -> Payment:
    payer: User = UserFactory.create()
    payee: User = UserFactory.create()
    return services.payment_open(
        payer=payer,
        payee=payee,
        amount_minor=amount_minor,
        currency="EUR",
        description="Kubernetes cost review",
        hold_at=timezone.now() + hold_in if hold_in is not None else None,
    )


def _payment_authorized(api: stripe.StripeClient, *, amount_minor: int = 1000) -> Payment:
    """A hold placed on session: the pay page, the card confirmed, the browser back."""
    payment = _payment_open(amount_minor=amount_minor)
    checkout = services.payment_checkout(payment.pk)
    assert not checkout.saves_card
    payment.refresh_from_db()
    browser_confirms(api, payment.intent_id)
    payment = services.payment_sync(payment.pk, source="browser_return")
    assert payment.state == PaymentState.AUTHORIZED
    return payment


def _settle(payment: Payment, amount_minor: int) -> Settlement:
    with transaction.atomic():
        return services.payment_settle(
            payment,
            amount_minor=amount_minor,
            currency=payment.currency,
            rule="metered",
            inputs={"seconds": 1800, "rate_minor_per_hour": 2 * amount_minor},
            explanation="30 minutes at the hourly rate.",
        )


def _command_of(payment: Payment, kind: str) -> PaymentCommand:
    return PaymentCommand.objects.get(payment=payment, kind=kind)


def _payment_captured(api: stripe.StripeClient, *, hold: int, capture: int) -> Payment:
    payment = _payment_authorized(api, amount_minor=hold)
    _settle(payment, capture)
    services.command_execute(_command_of(payment, CommandKind.CAPTURE).pk)
    payment.refresh_from_db()
    assert payment.state == PaymentState.CAPTURED
    return payment


def _setup_confirmed_by_browser(api: stripe.StripeClient, payment: Payment, number: str) -> str:
    """What Stripe.js does when a card is saved: confirm the SetupIntent with the card, which
    real Stripe also attaches to the SetupIntent's customer. localstripe leaves the card
    unattached, so the test attaches it, as Stripe would (and as an off-session charge needs).
    """
    method = card_method(api, number)
    setup = api.v1.setup_intents.confirm(payment.setup_id, params={"payment_method": method})
    assert setup.status == "succeeded"
    api.v1.payment_methods.attach(method, params={"customer": payment.customer_id})
    return method


def _payment_card_saved(api: stripe.StripeClient, number: str = GOOD_CARD) -> Payment:
    """A session far ahead whose hold is due now: the card saved, the hold not placed yet."""
    payment = _payment_open(hold_in=timedelta(minutes=-1))
    checkout = services.payment_checkout(payment.pk)
    assert checkout.saves_card
    payment.refresh_from_db()
    assert checkout.client_secret.startswith(payment.setup_id)
    _setup_confirmed_by_browser(api, payment, number)
    payment = services.payment_sync(payment.pk, source="browser_return")
    assert payment.state == PaymentState.CARD_SAVED
    return payment


def _charge_of(api: stripe.StripeClient, intent_id: str) -> stripe.Charge:
    charge = api.v1.payment_intents.retrieve(intent_id).latest_charge
    assert charge is not None
    return charge if isinstance(charge, stripe.Charge) else api.v1.charges.retrieve(charge)


def _metadata(obj: stripe.PaymentIntent | stripe.SetupIntent | stripe.Refund) -> dict[str, Any]:
    return obj.metadata.to_dict() if obj.metadata is not None else {}


def _event_kinds(payment: Payment) -> list[str]:
    return list(PaymentEvent.objects.filter(payment=payment).values_list("kind", flat=True))


def _row_counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (
            Payment,
            PaymentEvent,
            PaymentCommand,
            Settlement,
            WebhookEvent,
            OutboundEmail,
        )
    }


def _signature(payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    return f"t={timestamp},v1={hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()}"


def _wait_until(condition: Callable[[], bool], *, seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


# --- Holds, captures, releases, refunds -------------------------------------------------------


@pytest.mark.django_db
def test_hold_confirmed_in_the_browser_then_settled_for_less_captures_part_and_releases_the_rest(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_open(amount_minor=1000)

    checkout = services.payment_checkout(payment.pk)

    payment.refresh_from_db()
    assert not checkout.saves_card
    assert payment.customer_id.startswith("cus_")
    assert payment.intent_id.startswith("pi_")
    assert checkout.client_secret.startswith(f"{payment.intent_id}_secret_")
    at_stripe = stripe_api.v1.payment_intents.retrieve(payment.intent_id)
    assert at_stripe.status == "requires_payment_method"
    assert (at_stripe.amount, at_stripe.currency) == (1000, "eur")
    assert at_stripe.capture_method == "manual"
    assert at_stripe.customer == payment.customer_id
    assert _metadata(at_stripe) == {"payment": str(payment.pk)}
    # A reload of the pay page reuses the intent.
    assert services.payment_checkout(payment.pk).client_secret == checkout.client_secret

    browser_confirms(stripe_api, payment.intent_id)
    payment = services.payment_sync(payment.pk, source="browser_return")

    assert payment.state == PaymentState.AUTHORIZED
    assert payment.authorized_minor == 1000
    assert payment.payment_method_id.startswith("pm_")

    _settle(payment, 600)
    command = _command_of(payment, CommandKind.CAPTURE)
    assert (command.state, command.amount_minor) == (CommandState.PENDING, 600)

    assert services.command_execute(command.pk) == CommandState.SUCCEEDED

    payment.refresh_from_db()
    command.refresh_from_db()
    assert payment.state == PaymentState.CAPTURED
    assert (payment.authorized_minor, payment.captured_minor, payment.released_minor) == (
        1000,
        600,
        400,
    )
    assert payment.refunded_minor == 0
    assert command.state == CommandState.SUCCEEDED
    assert command.provider_ref == payment.intent_id
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == "succeeded"
    charge = _charge_of(stripe_api, payment.intent_id)
    assert charge.captured is True
    # localstripe records the uncaptured rest of a partial capture as a refund.
    assert charge.amount_refunded == 400
    assert _event_kinds(payment) == [
        "opened",
        "intent_created",
        PaymentState.AUTHORIZED,
        "settled",
        "capture_requested",
        PaymentState.CAPTURED,
    ]
    # Run again (a retried task): nothing is sent, nothing changes.
    assert services.command_execute(command.pk) == CommandState.SUCCEEDED
    assert _event_kinds(payment)[-1] == PaymentState.CAPTURED
    assert PaymentEvent.objects.filter(payment=payment).count() == 6


@pytest.mark.django_db
def test_releasing_an_authorized_hold_cancels_the_intent_at_stripe(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_authorized(stripe_api, amount_minor=1500)

    with transaction.atomic():
        settlement = services.payment_release(payment, reason="the expert canceled")
    command = _command_of(payment, CommandKind.CANCEL)
    assert settlement.amount_minor == 0
    assert command.state == CommandState.PENDING

    assert services.command_execute(command.pk) == CommandState.SUCCEEDED

    payment.refresh_from_db()
    command.refresh_from_db()
    assert payment.state == PaymentState.CANCELED
    assert (payment.authorized_minor, payment.captured_minor, payment.released_minor) == (
        1500,
        0,
        1500,
    )
    assert command.state == CommandState.SUCCEEDED
    assert command.provider_ref == payment.intent_id
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == "canceled"
    assert _event_kinds(payment)[-3:] == ["settled", "cancel_requested", PaymentState.CANCELED]


@pytest.mark.django_db
def test_partial_refund_after_a_partial_capture_is_sent_and_counted(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_captured(stripe_api, hold=1000, capture=600)
    assert _charge_of(stripe_api, payment.intent_id).amount_refunded == 400

    command = services.payment_refund(
        payment.pk, amount_minor=250, currency="EUR", reason="the video froze", actor=None
    )
    payment.refresh_from_db()
    # Counted when decided, so a second refund cannot exceed the charge meanwhile.
    assert payment.refunded_minor == 250

    assert services.command_execute(command.pk) == CommandState.SUCCEEDED

    payment.refresh_from_db()
    command.refresh_from_db()
    assert payment.refunded_minor == 250
    assert payment.refundable_minor == 350
    assert payment.state == PaymentState.CAPTURED
    assert command.state == CommandState.SUCCEEDED
    assert command.provider_ref.startswith("re_")
    charge = _charge_of(stripe_api, payment.intent_id)
    # 400 never captured + 250 refunded.
    assert charge.amount_refunded == 650
    refund = stripe_api.v1.refunds.retrieve(command.provider_ref)
    assert refund.amount == 250
    assert refund.charge == charge.id
    assert _metadata(refund) == {"payment": str(payment.pk), "command": str(command.pk)}
    assert _event_kinds(payment)[-2:] == ["refund_decided", "refund_sent"]


@pytest.mark.django_db
def test_capture_already_done_at_stripe_is_reconciled_not_resent(
    stripe_api: stripe.StripeClient,
) -> None:
    """An earlier attempt captured and its answer was lost. localstripe does not replay
    idempotent requests: the repeat gets a 400, and the intent decides."""
    payment = _payment_authorized(stripe_api, amount_minor=1000)
    _settle(payment, 700)
    command = _command_of(payment, CommandKind.CAPTURE)
    stripe_api.v1.payment_intents.capture(payment.intent_id, params={"amount_to_capture": 700})

    assert services.command_execute(command.pk) == CommandState.SUCCEEDED

    payment.refresh_from_db()
    assert payment.state == PaymentState.CAPTURED
    assert (payment.captured_minor, payment.released_minor) == (700, 300)
    assert _charge_of(stripe_api, payment.intent_id).amount_refunded == 300


# --- Saved cards and off-session holds --------------------------------------------------------


@pytest.mark.django_db
def test_card_saved_for_later_then_hold_placed_off_session_is_authorized(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_open(amount_minor=1200, hold_in=timedelta(minutes=-1))

    checkout = services.payment_checkout(payment.pk)

    payment.refresh_from_db()
    assert checkout.saves_card
    assert payment.setup_id.startswith("seti_")
    assert payment.intent_id == ""
    setup = stripe_api.v1.setup_intents.retrieve(payment.setup_id)
    assert setup.customer == payment.customer_id
    assert setup.usage == "off_session"
    assert _metadata(setup) == {"payment": str(payment.pk)}
    method = _setup_confirmed_by_browser(stripe_api, payment, GOOD_CARD)

    payment = services.payment_sync(payment.pk, source="browser_return")

    assert payment.state == PaymentState.CARD_SAVED
    assert payment.payment_method_id == method
    assert payment.authorized_minor == 0
    assert services.holds_due_ids() == [payment.pk]

    payment = services.payment_hold_place(payment.pk)

    assert payment.state == PaymentState.AUTHORIZED
    assert payment.authorized_minor == 1200
    assert payment.intent_id.startswith("pi_")
    intent = stripe_api.v1.payment_intents.retrieve(payment.intent_id)
    assert intent.status == "requires_capture"
    assert intent.capture_method == "manual"
    assert (intent.amount, intent.currency) == (1200, "eur")
    assert intent.customer == payment.customer_id
    assert intent.payment_method == method
    assert _metadata(intent) == {"payment": str(payment.pk)}
    authorized = PaymentEvent.objects.get(payment=payment, kind=PaymentState.AUTHORIZED)
    assert authorized.data["source"] == "off_session"
    # The task and the sweep may both run: the second does nothing.
    assert services.payment_hold_place(payment.pk).intent_id == payment.intent_id
    assert _event_kinds(payment).count("intent_created") == 1
    assert services.holds_due_ids() == []


@pytest.mark.django_db
def test_card_declined_when_saved_leaves_the_payment_waiting_for_another_card(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_open(hold_in=timedelta(minutes=-1))
    checkout = services.payment_checkout(payment.pk)
    payment.refresh_from_db()

    # Stripe.js shows the decline on the pay page; the browser never comes back.
    with pytest.raises(stripe.CardError, match="declined"):
        stripe_api.v1.setup_intents.confirm(
            payment.setup_id,
            params={"payment_method": card_method(stripe_api, DECLINED_ON_ATTACH)},
        )
    payment = services.payment_sync(payment.pk, source="reconcile")

    assert payment.state == PaymentState.PENDING
    assert payment.payment_method_id == ""
    assert services.holds_due_ids() == []
    assert "card_saved" not in _event_kinds(payment)

    # The pay page again offers the same SetupIntent, and another card saves.
    assert services.payment_checkout(payment.pk).client_secret == checkout.client_secret
    _setup_confirmed_by_browser(stripe_api, payment, GOOD_CARD)
    assert services.payment_sync(payment.pk, source="browser_return").state == (
        PaymentState.CARD_SAVED
    )


@pytest.mark.django_db
def test_card_declined_on_session_records_the_error_once_and_stays_unpaid(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_open()
    services.payment_checkout(payment.pk)
    payment.refresh_from_db()

    with pytest.raises(stripe.CardError, match="declined"):
        browser_confirms(stripe_api, payment.intent_id, DECLINED_ON_CHARGE)
    payment = services.payment_sync(payment.pk, source="browser_return")
    services.payment_sync(payment.pk, source="reconcile")

    payment.refresh_from_db()
    assert payment.state == PaymentState.PENDING
    assert payment.last_error == "Your card was declined."
    assert payment.authorized_minor == 0
    assert _event_kinds(payment).count("authorization_failed") == 1
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == (
        "requires_payment_method"
    )


@pytest.mark.django_db
def test_off_session_hold_on_a_saved_card_that_declines_emails_the_payer_and_stops_retrying(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_card_saved(stripe_api, DECLINED_ON_CHARGE)

    payment = services.payment_hold_place(payment.pk)

    assert payment.state == PaymentState.CARD_SAVED
    assert payment.hold_at is None
    assert payment.intent_id == ""
    assert payment.authorized_minor == 0
    assert payment.last_error == "Your card was declined."
    failed = PaymentEvent.objects.get(payment=payment, kind="authorization_failed")
    assert failed.data == {"source": "off_session", "error": "Your card was declined."}
    email = OutboundEmail.objects.get(key=f"payment-{payment.pk}-pay-again-1")
    assert email.to == payment.payer.email
    assert email.subject == (
        f"Action needed: your payment for Kubernetes cost review with {payment.payee.display_name}"
    )
    assert reverse("billing:pay", args=[payment.pk]) in email.body
    assert "Your card was declined." in email.body
    # Not due any more: the sweep does not charge the declining card again and again.
    assert services.holds_due_ids() == []
    assert services.payment_hold_place(payment.pk).last_error == "Your card was declined."
    assert OutboundEmail.objects.filter(key__startswith=f"payment-{payment.pk}-").count() == 1


@pytest.mark.django_db
def test_after_a_declined_off_session_hold_the_payer_pays_again_on_session(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_card_saved(stripe_api, DECLINED_ON_CHARGE)
    services.payment_hold_place(payment.pk)

    checkout = services.payment_checkout(payment.pk)

    payment.refresh_from_db()
    assert not checkout.saves_card
    assert payment.intent_id.startswith("pi_")
    browser_confirms(stripe_api, payment.intent_id, GOOD_CARD)
    payment = services.payment_sync(payment.pk, source="browser_return")
    assert payment.state == PaymentState.AUTHORIZED
    assert payment.last_error == ""
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == "requires_capture"


# --- Webhooks ----------------------------------------------------------------------------------


def _post(url: str, data: bytes, content_type: str) -> None:
    request = urllib.request.Request(  # noqa: S310 - the test's own localstripe on loopback
        url, data=data, method="POST", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 200


@pytest.fixture
def localstripe_webhook(localstripe: str, live_server: LiveServer) -> Iterator[str]:
    """localstripe delivers its events, signed, to this test's live server."""
    config = f"{localstripe}/_config/webhooks/parley-tests"
    url = live_server.url + reverse("billing:stripe_webhook")
    form = f"url={url}&secret={WEBHOOK_SECRET}".encode()
    _post(config, form, "application/x-www-form-urlencoded")
    yield url
    # localstripe keeps webhooks for its whole session: subscribe this one to nothing.
    silent = {"url": url, "secret": WEBHOOK_SECRET, "events": []}
    _post(config, json.dumps(silent).encode(), "application/json")


@pytest.mark.django_db(transaction=True)
def test_capture_whose_answer_was_lost_is_completed_by_the_signed_webhook_from_localstripe(
    stripe_api: stripe.StripeClient,
    localstripe_webhook: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payment = _payment_authorized(stripe_api, amount_minor=1000)
    real_capture = StripeGateway.intent_capture

    def capture_then_lose_the_answer(
        self: StripeGateway, intent_id: str, *, amount_minor: int, idempotency_key: str
    ) -> Intent:
        real_capture(self, intent_id, amount_minor=amount_minor, idempotency_key=idempotency_key)
        raise ProviderUnavailable("Connection reset while reading the answer.")

    monkeypatch.setattr(StripeGateway, "intent_capture", capture_then_lose_the_answer)

    # Committed here (transactional test): the command task runs inline after commit.
    _settle(payment, 700)

    command = _command_of(payment, CommandKind.CAPTURE)
    payment.refresh_from_db()
    assert command.attempts == 1
    assert command.state == CommandState.PENDING
    assert "Connection reset" in command.last_error
    assert payment.state == PaymentState.AUTHORIZED
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == "succeeded"

    def webhook_processed() -> bool:
        return WebhookEvent.objects.filter(
            provider="stripe",
            type="payment_intent.succeeded",
            payload__object__id=payment.intent_id,
            processed_at__isnull=False,
        ).exists()

    assert _wait_until(webhook_processed), list(WebhookEvent.objects.values("type", "last_error"))

    event = WebhookEvent.objects.get(
        type="payment_intent.succeeded", payload__object__id=payment.intent_id
    )
    assert event.event_id.startswith("evt_")
    assert event.attempts == 1
    assert event.last_error == ""
    payment.refresh_from_db()
    command.refresh_from_db()
    assert payment.state == PaymentState.CAPTURED
    assert (payment.captured_minor, payment.released_minor) == (700, 300)
    assert command.state == CommandState.SUCCEEDED
    assert command.provider_ref == payment.intent_id
    captured = PaymentEvent.objects.get(payment=payment, kind=PaymentState.CAPTURED)
    assert captured.data["source"] == "webhook"
    # The retry finds the command done and sends nothing.
    monkeypatch.undo()
    assert services.command_execute(command.pk) == CommandState.SUCCEEDED


def _forged_event(intent_id: str, payment: Payment) -> bytes:
    return json.dumps(
        {
            "id": "evt_forged0000000001",
            "object": "event",
            "type": "payment_intent.succeeded",
            "created": int(time.time()),
            "data": {
                "object": {
                    "id": intent_id,
                    "object": "payment_intent",
                    "amount": payment.amount_minor,
                    "currency": payment.currency.lower(),
                    "status": "succeeded",
                    "metadata": {"payment": str(payment.pk)},
                }
            },
        }
    ).encode()


@pytest.mark.django_db
def test_webhook_signed_with_another_secret_is_refused_and_not_stored(
    stripe_api: stripe.StripeClient, client: Client
) -> None:
    payment = _payment_authorized(stripe_api)
    body = _forged_event(payment.intent_id, payment)
    url = reverse("billing:stripe_webhook")

    response = client.post(
        url,
        body,
        content_type="application/json",
        headers={"Stripe-Signature": _signature(body, "whsec_someone_else", int(time.time()))},
    )

    assert response.status_code == 400
    assert response.content.decode().startswith("Webhook refused:")
    assert WebhookEvent.objects.count() == 0
    payment.refresh_from_db()
    assert payment.state == PaymentState.AUTHORIZED
    # The same body, signed with the secret, would have been taken: the signature decided.
    response = client.post(
        url,
        body,
        content_type="application/json",
        headers={"Stripe-Signature": _signature(body, WEBHOOK_SECRET, int(time.time()))},
    )
    assert response.status_code == 200
    assert WebhookEvent.objects.filter(event_id="evt_forged0000000001").count() == 1


@pytest.mark.django_db
def test_setup_intent_succeeded_webhook_saves_the_card_when_the_browser_never_came_back(
    stripe_api: stripe.StripeClient, client: Client
) -> None:
    """localstripe sends no SetupIntent events, so the event is built from the SetupIntent
    localstripe holds and signed as Stripe signs it."""
    payment = _payment_open(hold_in=timedelta(days=3))
    services.payment_checkout(payment.pk)
    payment.refresh_from_db()
    method = _setup_confirmed_by_browser(stripe_api, payment, GOOD_CARD)
    setup = stripe_api.v1.setup_intents.retrieve(payment.setup_id).to_dict()
    body = json.dumps(
        {
            "id": "evt_setup0000000001",
            "object": "event",
            "type": "setup_intent.succeeded",
            "created": int(time.time()),
            "data": {"object": setup},
        }
    ).encode()

    response = client.post(
        reverse("billing:stripe_webhook"),
        body,
        content_type="application/json",
        headers={"Stripe-Signature": _signature(body, WEBHOOK_SECRET, int(time.time()))},
    )
    assert response.status_code == 200
    event = WebhookEvent.objects.get(event_id="evt_setup0000000001")

    assert services.webhook_process(event.pk) is True

    payment.refresh_from_db()
    assert payment.state == PaymentState.CARD_SAVED
    assert payment.payment_method_id == method
    assert PaymentEvent.objects.get(payment=payment, kind="card_saved").data["source"] == "webhook"


@pytest.mark.django_db
def test_webhook_altered_after_signing_or_replayed_late_is_refused(
    stripe_api: stripe.StripeClient, client: Client
) -> None:
    payment = _payment_authorized(stripe_api)
    body = _forged_event(payment.intent_id, payment)
    url = reverse("billing:stripe_webhook")
    now = int(time.time())
    altered = body.replace(b'"amount": 1000', b'"amount": 1')
    assert altered != body

    altered_response = client.post(
        url,
        altered,
        content_type="application/json",
        headers={"Stripe-Signature": _signature(body, WEBHOOK_SECRET, now)},
    )
    late_response = client.post(
        url,
        body,
        content_type="application/json",
        headers={"Stripe-Signature": _signature(body, WEBHOOK_SECRET, now - 600)},
    )
    unsigned_response = client.post(url, body, content_type="application/json")

    assert altered_response.status_code == 400
    assert late_response.status_code == 400
    assert unsigned_response.status_code == 400
    assert WebhookEvent.objects.count() == 0


# --- Connect, at the request level ---------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    form: dict[str, str]


class Recorder(HTTPClient):
    """An HTTP client for the stripe SDK that records each request and answers canned JSON
    (localstripe has no Connect)."""

    name = "recorder"

    def __init__(self, answers: dict[tuple[str, str], dict[str, Any]]) -> None:
        super().__init__()
        self.answers = answers
        self.sent: list[Sent] = []

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        post_data: Any = None,
        *,
        _usage: list[str] | None = None,
    ) -> tuple[str, int, Mapping[str, str]]:
        parts = urlsplit(url)
        body = post_data.decode() if isinstance(post_data, bytes) else post_data or ""
        form = dict(parse_qsl(body or parts.query, keep_blank_values=True))
        self.sent.append(Sent(method.upper(), url, dict(headers or {}), form))
        answer = self.answers.get((method.upper(), parts.path))
        if answer is None:
            error = {"type": "invalid_request_error", "message": f"No answer for {parts.path}"}
            return json.dumps({"error": error}), 404, {"Request-Id": "req_recorder"}
        return json.dumps(answer), 200, {"Request-Id": "req_recorder"}

    def close(self) -> None:
        pass


ACCOUNT = "acct_1ParleyExpert"
ONBOARDING_URL = f"https://connect.stripe.com/setup/e/{ACCOUNT}/onboard"


def _connect_recorder() -> Recorder:
    account = {"id": ACCOUNT, "object": "account", "type": "express"}
    return Recorder(
        {
            ("POST", "/v1/accounts"): {**account, "details_submitted": False},
            ("POST", "/v1/account_links"): {"object": "account_link", "url": ONBOARDING_URL},
            ("GET", f"/v1/accounts/{ACCOUNT}"): {
                **account,
                "details_submitted": True,
                "payouts_enabled": True,
            },
            ("POST", "/v1/transfers"): {"id": "tr_1Parley", "object": "transfer"},
        }
    )


@pytest.fixture
def real_stripe_settings(settings: Settings) -> Settings:
    """The stripe provider pointed at Stripe itself; the recorder keeps it off the network."""
    settings.PAYMENT_PROVIDER = "stripe"
    settings.STRIPE_SECRET_KEY = "sk_test_parley"
    settings.STRIPE_API_BASE = ""
    return settings


def test_account_create_sends_an_express_account_with_transfers_and_the_idempotency_key(
    real_stripe_settings: Settings,
) -> None:
    recorder = _connect_recorder()
    gateway = StripeGateway(stripe_client(http_client=recorder))

    account_id = gateway.account_create(
        email="expert@example.test", idempotency_key="parley-user-7-payout-account"
    )

    assert account_id == ACCOUNT
    [sent] = recorder.sent
    assert (sent.method, sent.url) == ("POST", "https://api.stripe.com/v1/accounts")
    assert sent.form == {
        "type": "express",
        "email": "expert@example.test",
        "capabilities[transfers][requested]": "true",
    }
    assert sent.headers["Idempotency-Key"] == "parley-user-7-payout-account"
    assert sent.headers["Authorization"] == "Bearer sk_test_parley"


def test_account_link_asks_for_onboarding_with_both_urls(
    real_stripe_settings: Settings,
) -> None:
    recorder = _connect_recorder()
    gateway = StripeGateway(stripe_client(http_client=recorder))

    url = gateway.account_link(
        ACCOUNT,
        refresh_url="https://parley.example/me/payouts/",
        return_url="https://parley.example/me/payouts/?returned=1",
    )

    assert url == ONBOARDING_URL
    [sent] = recorder.sent
    assert (sent.method, sent.url) == ("POST", "https://api.stripe.com/v1/account_links")
    assert sent.form == {
        "account": ACCOUNT,
        "refresh_url": "https://parley.example/me/payouts/",
        "return_url": "https://parley.example/me/payouts/?returned=1",
        "type": "account_onboarding",
    }


def test_transfer_create_sends_amount_lowercase_currency_destination_and_metadata(
    real_stripe_settings: Settings,
) -> None:
    recorder = _connect_recorder()
    gateway = StripeGateway(stripe_client(http_client=recorder))

    transfer_id = gateway.transfer_create(
        amount_minor=510,
        currency="EUR",
        destination=ACCOUNT,
        idempotency_key="parley-command-41",
        metadata={"payment": "12", "command": "41"},
    )

    assert transfer_id == "tr_1Parley"
    [sent] = recorder.sent
    assert (sent.method, sent.url) == ("POST", "https://api.stripe.com/v1/transfers")
    assert sent.form == {
        "amount": "510",
        "currency": "eur",
        "destination": ACCOUNT,
        "metadata[payment]": "12",
        "metadata[command]": "41",
    }
    assert sent.headers["Idempotency-Key"] == "parley-command-41"


def test_account_status_reads_details_submitted_and_payouts_enabled(
    real_stripe_settings: Settings,
) -> None:
    recorder = _connect_recorder()
    gateway = StripeGateway(stripe_client(http_client=recorder))

    assert gateway.account_status(ACCOUNT) == (True, True)

    [sent] = recorder.sent
    assert (sent.method, sent.url) == ("GET", f"https://api.stripe.com/v1/accounts/{ACCOUNT}")
    assert sent.form == {}


@pytest.mark.django_db
def test_payout_after_the_dispute_window_is_transferred_to_the_experts_account(
    stripe_api: stripe.StripeClient,
    stripe_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stripe_settings.PLATFORM_FEE_PERCENT = 15
    stripe_settings.PAYOUT_DELAY_HOURS = 72
    payment = _payment_captured(stripe_api, hold=1000, capture=600)
    settlement = Settlement.objects.get(payment=payment)
    assert settlement.payout_minor == 510  # 600 less the 15 % fee
    # From here on the provider is Stripe itself (Connect), seen through the recorder.
    stripe_settings.STRIPE_API_BASE = ""
    recorder = _connect_recorder()

    def recorded_client(http_client: Any = None) -> stripe.StripeClient:
        return stripe_client(http_client=recorder)

    monkeypatch.setattr(stripe_module, "stripe_client", recorded_client)
    expert = payment.payee

    link = services.payout_account_link(
        expert, refresh_url="https://parley.example/me/payouts/", return_url="https://r.example/"
    )
    account = services.payout_account_refresh(expert)

    assert link == ONBOARDING_URL
    assert account is not None
    assert (account.account_id, account.provider) == (ACCOUNT, "stripe")
    assert (account.details_submitted, account.payouts_enabled) == (True, True)
    assert recorder.sent[0].headers["Idempotency-Key"] == f"parley-user-{expert.pk}-payout-account"
    assert recorder.sent[0].form["email"] == expert.email
    assert [(s.method, urlsplit(s.url).path) for s in recorder.sent] == [
        ("POST", "/v1/accounts"),
        ("POST", "/v1/account_links"),
        ("GET", f"/v1/accounts/{ACCOUNT}"),
    ]
    recorder.sent.clear()
    # Inside the dispute window nothing is paid out.
    assert services.payouts_due_create() == 0

    later = timezone.now() + timedelta(hours=73)
    assert services.payouts_due_create(now=later) == 1
    assert services.payouts_due_create(now=later) == 0
    command = _command_of(payment, CommandKind.TRANSFER)
    assert (command.amount_minor, command.destination) == (510, ACCOUNT)

    assert services.command_execute(command.pk) == CommandState.SUCCEEDED

    command.refresh_from_db()
    assert command.provider_ref == "tr_1Parley"
    [sent] = recorder.sent
    assert (sent.method, sent.url) == ("POST", "https://api.stripe.com/v1/transfers")
    assert sent.form == {
        "amount": "510",
        "currency": "eur",
        "destination": ACCOUNT,
        "metadata[payment]": str(payment.pk),
        "metadata[command]": str(command.pk),
        # Tied to the client's charge, so the transfer waits for its funds.
        "source_transaction": payment.charge_id,
    }
    assert payment.charge_id.startswith("ch_")
    assert sent.headers["Idempotency-Key"] == command.idempotency_key
    assert sent.headers["Idempotency-Key"] == f"parley-command-{command.pk}"
    assert _event_kinds(payment)[-2:] == ["transfer_requested", "transfer_sent"]


@pytest.mark.django_db
def test_payout_shrinks_by_the_experts_share_of_a_refund(
    stripe_api: stripe.StripeClient,
    stripe_settings: Settings,
) -> None:
    stripe_settings.PLATFORM_FEE_PERCENT = 15
    stripe_settings.PAYOUT_DELAY_HOURS = 72
    payment = _payment_captured(stripe_api, hold=1000, capture=600)
    refund = services.payment_refund(
        payment.pk, amount_minor=200, currency="EUR", reason="late start", actor=None
    )
    assert services.command_execute(refund.pk) == CommandState.SUCCEEDED
    PayoutAccount.objects.create(
        user=payment.payee, provider="stripe", account_id=ACCOUNT, payouts_enabled=True
    )

    assert services.payouts_due_create(now=timezone.now() + timedelta(hours=73)) == 1

    # 510 less the expert's 85 % of the 200 refunded.
    assert _command_of(payment, CommandKind.TRANSFER).amount_minor == 340


# --- Refused input: a clear error, nothing written ---------------------------------------------


@pytest.mark.django_db
def test_capture_of_a_hold_canceled_at_stripe_is_refused_and_writes_nothing(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_authorized(stripe_api, amount_minor=1000)
    # Canceled in Stripe's dashboard; the payment learns it on its next sync.
    stripe_api.v1.payment_intents.cancel(payment.intent_id)
    payment = services.payment_sync(payment.pk, source="reconcile")
    assert payment.state == PaymentState.CANCELED
    before = _row_counts()

    with pytest.raises(PaymentRefused, match="Nothing can be charged: the payment is released"):
        _settle(payment, 600)

    assert _row_counts() == before
    payment.refresh_from_db()
    assert (payment.state, payment.captured_minor) == (PaymentState.CANCELED, 0)


@pytest.mark.django_db
def test_capture_after_a_release_is_refused_and_writes_nothing(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_authorized(stripe_api, amount_minor=1000)
    with transaction.atomic():
        release = services.payment_release(payment, reason="the client canceled in time")
    services.command_execute(_command_of(payment, CommandKind.CANCEL).pk)
    payment.refresh_from_db()
    assert payment.state == PaymentState.CANCELED
    before = _row_counts()

    with pytest.raises(PaymentRefused, match="already settled .*a settlement is final"):
        _settle(payment, 600)

    assert _row_counts() == before
    assert not PaymentCommand.objects.filter(payment=payment, kind=CommandKind.CAPTURE).exists()
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == "canceled"
    # The same release decided again (a sweep repeating itself) is the first one, unchanged.
    with transaction.atomic():
        again = services.payment_release(payment, reason="the client canceled in time")
    assert again.pk == release.pk
    assert _row_counts() == before


@pytest.mark.django_db
def test_refund_of_a_released_hold_is_refused_and_writes_nothing(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_authorized(stripe_api, amount_minor=1000)
    with transaction.atomic():
        services.payment_release(payment, reason="the expert canceled")
    services.command_execute(_command_of(payment, CommandKind.CANCEL).pk)
    before = _row_counts()

    with pytest.raises(PaymentRefused, match="Only a charged payment can be refunded"):
        services.payment_refund(
            payment.pk, amount_minor=100, currency="EUR", reason="goodwill", actor=None
        )

    assert _row_counts() == before
    payment.refresh_from_db()
    assert payment.refunded_minor == 0


@pytest.mark.django_db
def test_refund_beyond_what_was_captured_is_refused_and_writes_nothing(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_captured(stripe_api, hold=1000, capture=600)
    before = _row_counts()

    with pytest.raises(PaymentRefused, match="At most .* can be refunded"):
        services.payment_refund(
            payment.pk, amount_minor=601, currency="EUR", reason="goodwill", actor=None
        )
    with pytest.raises(PaymentRefused, match="in USD but the payment is in EUR"):
        services.payment_refund(
            payment.pk, amount_minor=100, currency="USD", reason="goodwill", actor=None
        )

    assert _row_counts() == before
    payment.refresh_from_db()
    assert payment.refunded_minor == 0
    assert _charge_of(stripe_api, payment.intent_id).amount_refunded == 400


@pytest.mark.django_db
def test_settlement_above_the_hold_is_refused_and_writes_nothing(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_authorized(stripe_api, amount_minor=1000)
    before = _row_counts()

    with pytest.raises(PaymentRefused, match="is more than the hold"):
        _settle(payment, 1001)

    assert _row_counts() == before
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == "requires_capture"
