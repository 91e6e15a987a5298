"""Stripe through the stripe package's StripeClient.

Only parameters that both Stripe and the localstripe test server understand are sent for the
payment calls; Connect (accounts, links, transfers) is Stripe-only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import stripe
from django.conf import settings
from stripe.params import PaymentIntentCreateParams, TransferCreateParams

from billing.gateways.base import (
    BadSignature,
    CardDeclined,
    GatewayError,
    Intent,
    ProviderUnavailable,
    Setup,
    UnexpectedState,
    WebhookMessage,
)

logger = logging.getLogger(__name__)

# Webhooks older than this are refused as replays (Stripe's own default tolerance).
WEBHOOK_TOLERANCE_SECONDS = 300
# One request's time limit; with the retries it stays well inside a command's lease
# (PAYMENT_COMMAND_LEASE_SECONDS), so no second worker resends while one still waits.
REQUEST_TIMEOUT_SECONDS = 20
NETWORK_RETRIES = 2


@contextmanager
def _translated_errors() -> Iterator[None]:
    """Stripe's exceptions in the three kinds the services act on differently."""
    try:
        yield
    except stripe.CardError as error:
        raise CardDeclined(error.user_message or "The card was declined.") from error
    except stripe.InvalidRequestError as error:
        # Stripe's developer text (with its request id) goes to the log, not to people.
        logger.warning("Stripe refused a request: %s", error)
        code = f" ({error.code})" if error.code else ""
        raise UnexpectedState(f"The payment provider refused the request{code}.") from error
    except (
        stripe.APIConnectionError,
        stripe.RateLimitError,
        stripe.APIError,
        # The same key still in flight from another worker: wait and ask again.
        stripe.IdempotencyError,
    ) as error:
        logger.warning("Stripe unavailable: %s", error)
        raise ProviderUnavailable(type(error).__name__) from error
    except stripe.StripeError as error:
        logger.error("Stripe error: %s", error)
        raise GatewayError(
            f"The payment provider answered with an error ({type(error).__name__})."
        ) from error


def intent_from_stripe(obj: Any) -> Intent:
    data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    captured = data.get("amount_received")
    if captured is None and data.get("status") == "succeeded":
        charge = data.get("latest_charge")
        if isinstance(charge, dict) and charge.get("amount_captured") is not None:
            captured = charge["amount_captured"]
    error = data.get("last_payment_error") or {}
    method = data.get("payment_method") or ""
    charge = data.get("latest_charge") or ""
    return Intent(
        id=data["id"],
        status=data["status"],
        amount_minor=int(data["amount"]),
        currency=str(data["currency"]).upper(),
        captured_minor=int(captured) if captured is not None else None,
        client_secret=data.get("client_secret") or "",
        payment_method=method if isinstance(method, str) else method.get("id", ""),
        customer=data.get("customer") or "",
        error=(error.get("message") or error.get("code") or "") if isinstance(error, dict) else "",
        metadata=dict(data.get("metadata") or {}),
        charge=charge if isinstance(charge, str) else str(charge.get("id", "")),
    )


def setup_from_stripe(obj: Any) -> Setup:
    data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return Setup(
        id=data["id"],
        status=data["status"],
        payment_method=data.get("payment_method") or "",
        customer=data.get("customer") or "",
        client_secret=data.get("client_secret") or "",
    )


class StripeGateway:
    name = "stripe"

    def __init__(self, client: stripe.StripeClient | None = None) -> None:
        self.client = client or stripe_client()

    def customer_create(self, *, email: str, idempotency_key: str) -> str:
        with _translated_errors():
            customer = self.client.v1.customers.create(
                params={"email": email}, options={"idempotency_key": idempotency_key}
            )
        return str(customer.id)

    def intent_create(
        self,
        *,
        amount_minor: int,
        currency: str,
        metadata: dict[str, str],
        idempotency_key: str,
        customer: str = "",
        payment_method: str = "",
        off_session: bool = False,
    ) -> Intent:
        params: PaymentIntentCreateParams = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "capture_method": "manual",
            "metadata": metadata,
        }
        if customer:
            params["customer"] = customer
        if off_session:
            params["payment_method"] = payment_method
            params["confirm"] = True
            params["off_session"] = True
            # Automatic payment methods (the API's default) would ask for a return_url that
            # an off-session charge never uses: no redirects, a saved card is all it can be.
            params["automatic_payment_methods"] = {"enabled": True, "allow_redirects": "never"}
        with _translated_errors():
            intent = self.client.v1.payment_intents.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        return intent_from_stripe(intent)

    def intent_retrieve(self, intent_id: str) -> Intent:
        with _translated_errors():
            return intent_from_stripe(self.client.v1.payment_intents.retrieve(intent_id))

    def intent_capture(self, intent_id: str, *, amount_minor: int, idempotency_key: str) -> Intent:
        with _translated_errors():
            intent = self.client.v1.payment_intents.capture(
                intent_id,
                params={"amount_to_capture": amount_minor},
                options={"idempotency_key": idempotency_key},
            )
        return intent_from_stripe(intent)

    def intent_cancel(self, intent_id: str, *, idempotency_key: str) -> Intent:
        with _translated_errors():
            intent = self.client.v1.payment_intents.cancel(
                intent_id, options={"idempotency_key": idempotency_key}
            )
        return intent_from_stripe(intent)

    def refund_create(
        self, intent_id: str, *, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> str:
        with _translated_errors():
            refund = self.client.v1.refunds.create(
                params={"payment_intent": intent_id, "amount": amount_minor, "metadata": metadata},
                options={"idempotency_key": idempotency_key},
            )
        # "pending" and "requires_action" may still fail; refund.failed tells it later.
        if refund.status in ("failed", "canceled"):
            reason = getattr(refund, "failure_reason", None) or "no reason given"
            raise GatewayError(f"The provider refused the refund ({refund.status}: {reason}).")
        return str(refund.id)

    def setup_create(
        self, *, customer: str, metadata: dict[str, str], idempotency_key: str
    ) -> Setup:
        with _translated_errors():
            setup = self.client.v1.setup_intents.create(
                params={"customer": customer, "usage": "off_session", "metadata": metadata},
                options={"idempotency_key": idempotency_key},
            )
        return setup_from_stripe(setup)

    def setup_retrieve(self, setup_id: str) -> Setup:
        with _translated_errors():
            return setup_from_stripe(self.client.v1.setup_intents.retrieve(setup_id))

    def transfer_create(
        self,
        *,
        amount_minor: int,
        currency: str,
        destination: str,
        idempotency_key: str,
        metadata: dict[str, str],
        source_transaction: str = "",
    ) -> str:
        params: TransferCreateParams = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "destination": destination,
            "metadata": metadata,
        }
        if source_transaction:
            params["source_transaction"] = source_transaction
        with _translated_errors():
            transfer = self.client.v1.transfers.create(
                params=params,
                options={"idempotency_key": idempotency_key},
            )
        return str(transfer.id)

    def account_create(self, *, email: str, idempotency_key: str) -> str:
        with _translated_errors():
            account = self.client.v1.accounts.create(
                params={
                    "type": "express",
                    "email": email,
                    "capabilities": {"transfers": {"requested": True}},
                },
                options={"idempotency_key": idempotency_key},
            )
        return str(account.id)

    def account_link(self, account_id: str, *, refresh_url: str, return_url: str) -> str:
        with _translated_errors():
            link = self.client.v1.account_links.create(
                params={
                    "account": account_id,
                    "refresh_url": refresh_url,
                    "return_url": return_url,
                    "type": "account_onboarding",
                }
            )
        return str(link.url)

    def account_status(self, account_id: str) -> tuple[bool, bool]:
        with _translated_errors():
            account = self.client.v1.accounts.retrieve(account_id)
        return bool(account.details_submitted), bool(account.payouts_enabled)

    def webhook_verify(self, payload: bytes, signature_header: str) -> WebhookMessage:
        secret = settings.STRIPE_WEBHOOK_SECRET
        if not secret:
            raise BadSignature("No webhook secret is configured.")
        try:
            event = self.client.construct_event(
                payload, signature_header, secret, tolerance=WEBHOOK_TOLERANCE_SECONDS
            )
        except stripe.SignatureVerificationError as error:
            raise BadSignature(str(error)) from error
        except ValueError as error:
            raise BadSignature("The body is not a JSON event.") from error
        data = event.to_dict()
        return WebhookMessage(
            id=data["id"],
            type=data["type"],
            object=data["data"]["object"],
            created=int(data.get("created") or 0),
        )


def stripe_client(http_client: Any = None) -> stripe.StripeClient:
    """A client for the configured account; STRIPE_API_BASE points it at a test server."""
    base = settings.STRIPE_API_BASE
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses={"api": base} if base else None,
        # Retries reuse the request's idempotency key, so they cannot double an effect.
        max_network_retries=NETWORK_RETRIES,
        http_client=http_client or stripe.new_default_http_client(timeout=REQUEST_TIMEOUT_SECONDS),
    )
