"""The small interface every payment provider is used through, and its answers.

Statuses are Stripe's words (`requires_payment_method`, `requires_action`, `requires_capture`,
`succeeded`, `canceled`) for both providers, so billing's services never branch on provider.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


class GatewayError(Exception):
    """The provider could not do what was asked; the message is safe to show staff."""


class CardDeclined(GatewayError):
    """The card was refused: a definitive answer, not worth retrying with the same card."""


class UnexpectedState(GatewayError):
    """The provider refused the request for the object's state (already captured, canceled…).

    Never answered by sending a different request: the caller retrieves the object and
    reconciles with what the provider actually holds.
    """


class ProviderUnavailable(GatewayError):
    """Network trouble or a provider-side error: the same request may be retried later."""


class BadSignature(GatewayError):
    """A webhook whose signature or timestamp does not verify."""


@dataclass(frozen=True)
class Intent:
    id: str
    status: str
    amount_minor: int
    currency: str
    # What the provider charged; None when the provider's answer does not say.
    captured_minor: int | None = None
    client_secret: str = ""
    payment_method: str = ""
    customer: str = ""
    error: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    charge: str = ""


@dataclass(frozen=True)
class Setup:
    id: str
    status: str
    payment_method: str = ""
    customer: str = ""
    client_secret: str = ""


@dataclass(frozen=True)
class WebhookMessage:
    id: str
    type: str
    object: dict[str, Any]
    created: int


class Gateway(Protocol):
    name: str

    def customer_create(self, *, email: str, idempotency_key: str) -> str: ...

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
    ) -> Intent: ...

    def intent_retrieve(self, intent_id: str) -> Intent: ...

    def intent_capture(
        self, intent_id: str, *, amount_minor: int, idempotency_key: str
    ) -> Intent: ...

    def intent_cancel(self, intent_id: str, *, idempotency_key: str) -> Intent: ...

    def refund_create(
        self, intent_id: str, *, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> str: ...

    def setup_create(
        self, *, customer: str, metadata: dict[str, str], idempotency_key: str
    ) -> Setup: ...

    def setup_retrieve(self, setup_id: str) -> Setup: ...

    def transfer_create(
        self,
        *,
        amount_minor: int,
        currency: str,
        destination: str,
        idempotency_key: str,
        metadata: dict[str, str],
        source_transaction: str = "",
    ) -> str: ...

    def account_create(self, *, email: str, idempotency_key: str) -> str: ...

    def account_link(self, account_id: str, *, refresh_url: str, return_url: str) -> str: ...

    def account_status(self, account_id: str) -> tuple[bool, bool]: ...

    def webhook_verify(self, payload: bytes, signature_header: str) -> WebhookMessage: ...
