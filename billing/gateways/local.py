"""The built-in payment provider: no network, no account, every operation on record.

It stands in for Stripe on a laptop: the product's test-card form confirms intents here the way
Stripe.js confirms them at Stripe. Authorizations succeed unless the card number is one of the
listed decline numbers. Each request with an idempotency key is answered once and replayed
after, as Stripe does; requests on one intent are serialised by a row lock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from django.db import connection, transaction

from billing.gateways.base import (
    BadSignature,
    CardDeclined,
    Intent,
    Setup,
    UnexpectedState,
    WebhookMessage,
)
from billing.models import LocalIntent, LocalOperation

# Stripe's test numbers for a generic decline and for insufficient funds.
DECLINE_NUMBERS = {
    "4000000000000002": "Your card was declined.",
    "4000000000009995": "Your card has insufficient funds.",
}
TEST_CARD = "4242424242424242"


def _token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _intent(row: LocalIntent, error: str = "") -> Intent:
    return Intent(
        id=row.id,
        status=row.status,
        amount_minor=row.amount_minor,
        currency=row.currency,
        captured_minor=row.captured_minor if row.status == "succeeded" else None,
        client_secret=f"{row.id}_secret",
        payment_method=row.payment_method,
        customer=row.customer,
        error=error,
        metadata={str(k): str(v) for k, v in row.metadata.items()},
        charge=f"lch_{row.id.removeprefix('lpi_')}" if row.status == "succeeded" else "",
    )


def _setup(row: LocalIntent) -> Setup:
    return Setup(
        id=row.id,
        status=row.status,
        payment_method=row.payment_method,
        customer=row.customer,
        client_secret=f"{row.id}_secret",
    )


# The first key of the two-key advisory locks this provider takes ("LoPr"), so they cannot
# collide with advisory locks taken for anything else.
_KEY_LOCK_CLASS = 0x4C6F5072


def _key_lock(idempotency_key: str) -> None:
    """Serialise requests carrying this key until the caller's transaction ends. SQLite needs
    nothing: its transactions are IMMEDIATE (settings), one writer at a time."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", [_KEY_LOCK_CLASS, idempotency_key]
        )


def _card_method(number: str) -> str:
    """A saved card's id; it remembers whether the card declines, never the number."""
    outcome = "decline" if number in DECLINE_NUMBERS else "ok"
    return f"lpm_{outcome}_{number[-4:]}"


class LocalGateway:
    name = "local"

    def customer_create(self, *, email: str, idempotency_key: str) -> str:
        return _token("lcus")

    def _once(
        self,
        intent_id: str | None,
        operation: str,
        idempotency_key: str | None,
        act: Callable[[LocalIntent | None], tuple[LocalIntent | None, str, int | None]],
    ) -> LocalIntent | None:
        """Run `act` once per idempotency key; a repeated key replays the first answer.

        Requests with one key queue on a transaction-scoped lock of that key before looking
        for an earlier answer, so a repeat sent while the first is in flight waits for it and
        replays it, as Stripe does. (Looking first and inserting after let concurrent repeats
        all miss and all act; the log's unique key then crashed every one but the first.)
        """
        with transaction.atomic():
            if idempotency_key:
                _key_lock(idempotency_key)
            row = None
            if intent_id is not None:
                row = LocalIntent.objects.select_for_update().filter(pk=intent_id).first()
                if row is None:
                    raise UnexpectedState(f"No such intent: {intent_id}")
            if idempotency_key:
                done = LocalOperation.objects.filter(idempotency_key=idempotency_key).first()
                if done is not None:
                    if done.operation != operation:
                        raise UnexpectedState(
                            "Keys for idempotent requests can only be used for the same request."
                        )
                    replayed: LocalIntent | None = done.intent
                    return replayed
            row, outcome, amount = act(row)
            LocalOperation.objects.create(
                intent=row,
                operation=operation,
                amount_minor=amount,
                idempotency_key=idempotency_key or None,
                outcome=outcome,
            )
            return row

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
        def create(_: LocalIntent | None) -> tuple[LocalIntent, str, int]:
            row = LocalIntent.objects.create(
                id=_token("lpi"),
                amount_minor=amount_minor,
                currency=currency.upper(),
                customer=customer,
                metadata=metadata,
            )
            return row, "created", amount_minor

        row = self._once(None, "intent_create", idempotency_key, create)
        assert row is not None  # noqa: S101 - create always returns its row
        if off_session:
            return self._authorize(row.id, payment_method, f"{idempotency_key}-confirm")
        return _intent(row)

    def intent_confirm_card(self, intent_id: str, *, card_number: str) -> Intent:
        """What the test-card form does: the local provider's Stripe.js."""
        return self._authorize(intent_id, _card_method(card_number), None)

    def _authorize(self, intent_id: str, method: str, idempotency_key: str | None) -> Intent:
        declined = method.startswith("lpm_decline")

        def confirm(row: LocalIntent | None) -> tuple[LocalIntent, str, int]:
            assert row is not None  # noqa: S101
            if row.status not in ("requires_payment_method", "requires_confirmation"):
                raise UnexpectedState(f"This payment is already {row.status.replace('_', ' ')}.")
            row.payment_method = method
            row.card_last4 = method[-4:]
            if declined:
                row.save(update_fields=["payment_method", "card_last4"])
                return row, "declined", row.amount_minor
            row.status = "requires_capture"
            row.save(update_fields=["payment_method", "card_last4", "status"])
            return row, "authorized", row.amount_minor

        row = self._once(intent_id, "intent_confirm", idempotency_key, confirm)
        assert row is not None  # noqa: S101
        if declined:
            raise CardDeclined("Your card was declined.")
        return _intent(row)

    def intent_retrieve(self, intent_id: str) -> Intent:
        row = LocalIntent.objects.filter(pk=intent_id, kind="payment").first()
        if row is None:
            raise UnexpectedState(f"No such payment intent: {intent_id}")
        return _intent(row)

    def intent_capture(self, intent_id: str, *, amount_minor: int, idempotency_key: str) -> Intent:
        def capture(row: LocalIntent | None) -> tuple[LocalIntent, str, int]:
            assert row is not None  # noqa: S101
            if row.status != "requires_capture":
                raise UnexpectedState(
                    f"This PaymentIntent could not be captured because it has a status of "
                    f"{row.status}."
                )
            if not 0 < amount_minor <= row.amount_minor:
                raise UnexpectedState("The amount to capture exceeds the authorized amount.")
            row.status, row.captured_minor = "succeeded", amount_minor
            row.save(update_fields=["status", "captured_minor"])
            return row, "captured", amount_minor

        row = self._once(intent_id, "intent_capture", idempotency_key, capture)
        assert row is not None  # noqa: S101
        return _intent(row)

    def intent_cancel(self, intent_id: str, *, idempotency_key: str) -> Intent:
        def cancel(row: LocalIntent | None) -> tuple[LocalIntent, str, None]:
            assert row is not None  # noqa: S101
            if row.status in ("succeeded", "canceled"):
                raise UnexpectedState(
                    f"This PaymentIntent could not be canceled because it has a status of "
                    f"{row.status}."
                )
            row.status = "canceled"
            row.save(update_fields=["status"])
            return row, "canceled", None

        row = self._once(intent_id, "intent_cancel", idempotency_key, cancel)
        assert row is not None  # noqa: S101
        return _intent(row)

    def refund_create(
        self, intent_id: str, *, amount_minor: int, idempotency_key: str, metadata: dict[str, str]
    ) -> str:
        def refund(row: LocalIntent | None) -> tuple[LocalIntent, str, int]:
            assert row is not None  # noqa: S101
            if row.status != "succeeded":
                raise UnexpectedState("Only a captured payment can be refunded.")
            if not 0 < amount_minor <= row.captured_minor - row.refunded_minor:
                raise UnexpectedState("The refund exceeds what is left of the charge.")
            row.refunded_minor += amount_minor
            row.save(update_fields=["refunded_minor"])
            return row, _token("lre"), amount_minor

        self._once(intent_id, "refund_create", idempotency_key, refund)
        done = LocalOperation.objects.get(idempotency_key=idempotency_key)
        return done.outcome

    def setup_create(
        self, *, customer: str, metadata: dict[str, str], idempotency_key: str
    ) -> Setup:
        def create(_: LocalIntent | None) -> tuple[LocalIntent, str, None]:
            row = LocalIntent.objects.create(
                id=_token("lseti"),
                kind="setup",
                amount_minor=0,
                currency="",
                customer=customer,
                metadata=metadata,
            )
            return row, "created", None

        row = self._once(None, "setup_create", idempotency_key, create)
        assert row is not None  # noqa: S101
        return _setup(row)

    def setup_confirm_card(self, setup_id: str, *, card_number: str) -> Setup:
        """Save a card for later, as the test-card form does. A decline number is refused
        here, when the card is attached, as Stripe refuses it."""

        def confirm(row: LocalIntent | None) -> tuple[LocalIntent, str, None]:
            assert row is not None  # noqa: S101
            if row.status != "requires_payment_method":
                raise UnexpectedState(f"This setup is already {row.status.replace('_', ' ')}.")
            if card_number in DECLINE_NUMBERS:
                return row, "declined", None
            row.status, row.payment_method = "succeeded", _card_method(card_number)
            row.card_last4 = card_number[-4:]
            row.save(update_fields=["status", "payment_method", "card_last4"])
            return row, "succeeded", None

        row = self._once(setup_id, "setup_confirm", None, confirm)
        assert row is not None  # noqa: S101
        if row.status != "succeeded":
            raise CardDeclined(DECLINE_NUMBERS.get(card_number, "Your card was declined."))
        return _setup(row)

    def setup_retrieve(self, setup_id: str) -> Setup:
        row = LocalIntent.objects.filter(pk=setup_id, kind="setup").first()
        if row is None:
            raise UnexpectedState(f"No such setup intent: {setup_id}")
        return _setup(row)

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
        def transfer(_: LocalIntent | None) -> tuple[None, str, int]:
            return None, f"{_token('ltr')} to {destination}", amount_minor

        self._once(None, "transfer_create", idempotency_key, transfer)
        return LocalOperation.objects.get(idempotency_key=idempotency_key).outcome.split()[0]

    def account_create(self, *, email: str, idempotency_key: str) -> str:
        return _token("lacct")

    def account_link(self, account_id: str, *, refresh_url: str, return_url: str) -> str:
        # Onboarding at the local provider is instant: the link leads straight back.
        return return_url

    def account_status(self, account_id: str) -> tuple[bool, bool]:
        return True, True

    def webhook_verify(self, payload: bytes, signature_header: str) -> WebhookMessage:
        raise BadSignature("The local payment provider sends no webhooks.")
