"""The provider's webhook events: verified, stored once, applied forward-only by a handler table."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing import signals
from billing.gateways import gateway_for
from billing.gateways.base import (
    Intent,
    WebhookMessage,
)
from billing.models import (
    Payment,
    PaymentState,
    PayoutAccount,
    Settlement,
    WebhookEvent,
)
from billing.services.commands import refund_failed_at_provider
from billing.services.payments import payment_apply_intent, payment_apply_setup
from billing.services.payouts import payout_hold
from billing.services.records import (
    payment_event_write,
)

logger = logging.getLogger(__name__)


def webhook_receive(provider: str, payload: bytes, signature_header: str) -> WebhookEvent | None:
    """Verify and store a provider event once by its id; it is processed after commit.

    Raises BadSignature for a forged, altered or stale delivery. Returns None for a
    duplicate delivery (already stored), which is acknowledged and otherwise ignored.
    """
    message = gateway_for(provider).webhook_verify(payload, signature_header)
    return _webhook_store(provider, message)


def _webhook_store(provider: str, message: WebhookMessage) -> WebhookEvent | None:
    from billing.tasks import webhook_process_task

    try:
        with transaction.atomic():
            event = WebhookEvent.objects.create(
                provider=provider,
                event_id=message.id,
                type=message.type,
                payload={"object": message.object, "created": message.created},
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: webhook_process_task.delay(event.pk), robust=True)
    return event


def webhook_process(event_id: int) -> bool:
    """Apply one stored event through its handler; returns False if it was already done."""
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event_id)
        if event.processed_at is not None:
            return False
        handler = WEBHOOK_HANDLERS.get(event.type)
        try:
            with transaction.atomic():
                if handler is not None:
                    handler(event.provider, event.payload["object"], int(event.payload["created"]))
        except Exception as error:
            # Whatever went wrong, the attempt is counted and its error kept on the event
            # (admin shows it); the sweep retries it at most 10 times.
            event.attempts += 1
            event.last_error = f"{type(error).__name__}: {error}"[:300]
            event.save(update_fields=["attempts", "last_error"])
            logger.exception("webhook %s (%s) failed", event.event_id, event.type)
            return False
        event.processed_at = timezone.now()
        event.attempts += 1
        event.last_error = ""
        event.save(update_fields=["processed_at", "attempts", "last_error"])
    return True


def webhooks_pending_ids(limit: int = 500) -> list[int]:
    """Stored events not processed yet (their task was lost, or a handler failed)."""
    return list(
        WebhookEvent.objects.filter(processed_at__isnull=True, attempts__lt=10).values_list(
            "pk", flat=True
        )[:limit]
    )


def _payment_by_intent(provider: str, intent_id: str) -> Payment | None:
    return Payment.objects.filter(provider=provider, intent_id=intent_id).first()


def _on_intent(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    from billing.gateways.stripe import intent_from_stripe

    payment = _payment_by_intent(provider, obj["id"])
    if payment is None:
        payment_id = (obj.get("metadata") or {}).get("payment", "")
        payment = (
            Payment.objects.filter(pk=int(payment_id)).first() if payment_id.isdigit() else None
        )
    if payment is None:
        return  # not one of ours (another integration on the same account)
    payment_apply_intent(payment.pk, intent_from_stripe(obj), source="webhook")


def _on_charge_refunded(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    """Refunds made outside Parley (the provider's dashboard) still count against the charge."""
    payment = _payment_by_intent(provider, obj.get("payment_intent") or "")
    if payment is None:
        return
    if obj.get("captured") and payment.state != PaymentState.CAPTURED:
        # Heard before payment_intent.succeeded (events come in any order): a refunded
        # captured charge proves the capture, so apply it first.
        captured_minor = obj.get("amount_captured")
        payment_apply_intent(
            payment.pk,
            Intent(
                id=payment.intent_id,
                status="succeeded",
                amount_minor=int(obj["amount"]),
                currency=str(obj["currency"]).upper(),
                captured_minor=int(captured_minor) if captured_minor is not None else None,
            ),
            source="webhook",
        )
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        refunded = int(obj.get("amount_refunded") or 0)
        if "amount_captured" not in obj:
            # Before API 2025-03-31.basil (and in localstripe, which has no amount_captured)
            # the uncaptured rest of a partial capture was counted as refunded too.
            refunded -= int(obj["amount"]) - locked.captured_minor
        refunded = min(refunded, locked.captured_minor)
        if locked.state == PaymentState.CAPTURED and refunded > locked.refunded_minor:
            extra = refunded - locked.refunded_minor
            locked.refunded_minor = refunded
            locked.save(update_fields=["refunded_minor", "updated_at"])
            payment_event_write(locked, "refunded_at_provider", None, extra, charge=obj.get("id"))


def _on_dispute_created(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    payment = _payment_by_intent(provider, obj.get("payment_intent") or "")
    if payment is None:
        return
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.events.filter(kind="dispute_opened", data__dispute=obj["id"]).exists():
            return
        if Settlement.objects.filter(payment=locked).exists():
            payout_hold(locked.pk, reason=f"chargeback {obj['id']} opened")
        payment_event_write(
            locked,
            "dispute_opened",
            None,
            int(obj.get("amount") or 0),
            dispute=obj["id"],
            reason=obj.get("reason") or "",
        )
        signals.payment_disputed.send(
            sender=Payment, payment=locked, dispute_id=obj["id"], reason=obj.get("reason") or ""
        )


def _on_dispute_closed(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    payment = _payment_by_intent(provider, obj.get("payment_intent") or "")
    if payment is None:
        return
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.events.filter(kind="dispute_closed", data__dispute=obj["id"]).exists():
            return
        if not locked.events.filter(kind="dispute_opened", data__dispute=obj["id"]).exists():
            # Closed before we heard it open (out of order): open it first, then close.
            _on_dispute_created(provider, obj)
        status = str(obj.get("status") or "")
        payment_event_write(locked, "dispute_closed", None, None, dispute=obj["id"], status=status)
        signals.payment_dispute_closed.send(
            sender=Payment, payment=locked, dispute_id=obj["id"], status=status
        )


def _on_refund_updated(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    """A refund the provider accepted can fail later (a closed card account)."""
    status = str(obj.get("status") or "")
    if status not in ("failed", "canceled"):
        return
    reason = obj.get("failure_reason") or "no reason given"
    refund_failed_at_provider(
        provider,
        str(obj.get("id") or ""),
        f"The provider reports the refund {status} ({reason}).",
        command_id=str((obj.get("metadata") or {}).get("command") or ""),
    )


def _on_setup_succeeded(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    from billing.gateways.stripe import setup_from_stripe

    payment = Payment.objects.filter(provider=provider, setup_id=obj["id"]).first()
    if payment is not None:
        payment_apply_setup(payment.pk, setup_from_stripe(obj), source="webhook")


def _on_account_updated(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    """Each event carries a snapshot of the account; events come in any order, so an older
    snapshot never overwrites a newer one."""
    status_at = datetime.fromtimestamp(created, tz=UTC)
    PayoutAccount.objects.filter(
        Q(status_at__isnull=True) | Q(status_at__lte=status_at),
        provider=provider,
        account_id=obj["id"],
    ).update(
        details_submitted=bool(obj.get("details_submitted")),
        payouts_enabled=bool(obj.get("payouts_enabled")),
        status_at=status_at,
        updated_at=timezone.now(),
    )


WEBHOOK_HANDLERS = {
    "payment_intent.amount_capturable_updated": _on_intent,
    "payment_intent.succeeded": _on_intent,
    "payment_intent.canceled": _on_intent,
    "payment_intent.payment_failed": _on_intent,
    "charge.refunded": _on_charge_refunded,
    "refund.failed": _on_refund_updated,
    "refund.updated": _on_refund_updated,
    "charge.refund.updated": _on_refund_updated,
    "charge.dispute.created": _on_dispute_created,
    "charge.dispute.closed": _on_dispute_closed,
    "setup_intent.succeeded": _on_setup_succeeded,
    "account.updated": _on_account_updated,
}
