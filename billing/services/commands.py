"""Sending the command outbox to the provider: leased, keyed, reconciled, retried."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.services import emails_batched
from billing import signals
from billing.gateways import gateway_for
from billing.gateways.base import (
    GatewayError,
    Intent,
    ProviderUnavailable,
    UnexpectedState,
)
from billing.models import (
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
)
from billing.services.payments import payment_apply_intent_marking
from billing.services.records import (
    payment_event_write,
)

logger = logging.getLogger(__name__)


def command_execute(command_id: int) -> str:
    """Send one command to the provider and record the outcome. Safe to run twice, and from
    two workers at once: a lease (a conditional UPDATE) lets one send at a time, and the
    idempotency key makes a repeat of the same request harmless at the provider.

    Returns the command's state afterwards.
    """
    now = timezone.now()
    leased = PaymentCommand.objects.filter(
        Q(leased_until__isnull=True) | Q(leased_until__lt=now),
        pk=command_id,
        state=CommandState.PENDING,
    ).update(
        leased_until=now + timedelta(seconds=settings.PAYMENT_COMMAND_LEASE_SECONDS),
        attempts=F("attempts") + 1,
    )
    command = PaymentCommand.objects.select_related("payment").get(pk=command_id)
    if not leased:
        return command.state
    gateway = gateway_for(command.payment.provider)
    try:
        outcome = _command_send(gateway, command)
    except UnexpectedState as error:
        # The provider refused for the object's state. It may be that an earlier attempt of
        # this very command succeeded and its answer was lost: ask, never resend differently.
        outcome = _command_reconcile(gateway, command, str(error))
    except ProviderUnavailable as error:
        _command_retry_later(command, str(error))
        return CommandState.PENDING
    except GatewayError as error:
        _command_fail(command, str(error))
        return CommandState.FAILED
    if isinstance(outcome, str) and outcome.startswith("failed:"):
        _command_fail(command, outcome.removeprefix("failed:"))
        return CommandState.FAILED
    _command_succeed(command, outcome)
    return CommandState.SUCCEEDED


def commands_execute(command_ids: list[int]) -> dict[str, int]:
    """Send these commands one after the other (the commands of a sweep's batch of closes,
    `commands_batched`), each as `command_execute` does; one that fails unexpectedly is
    logged and left to the outbox sweep, the others go on. Their receipts go to the email
    workers in one message. Returns how many ended in each state."""
    done: dict[str, int] = {}
    with emails_batched():
        for command_id in command_ids:
            try:
                state = command_execute(command_id)
            except SoftTimeLimitExceeded:
                # The task's time is up: the command being sent keeps its lease, the rest
                # wait for the outbox sweep (every 30 s).
                raise
            except Exception:
                logger.exception("Payment command %s failed; the sweep sends it again.", command_id)
                state = "error"
            done[state] = done.get(state, 0) + 1
    return done


def _command_send(gateway: Any, command: PaymentCommand) -> Intent | str:
    payment = command.payment
    key = command.idempotency_key
    if command.kind == CommandKind.CAPTURE:
        return gateway.intent_capture(  # type: ignore[no-any-return]
            payment.intent_id, amount_minor=command.amount_minor, idempotency_key=key
        )
    if command.kind == CommandKind.CANCEL:
        return gateway.intent_cancel(payment.intent_id, idempotency_key=key)  # type: ignore[no-any-return]
    if command.kind == CommandKind.REFUND:
        return gateway.refund_create(  # type: ignore[no-any-return]
            payment.intent_id,
            amount_minor=command.amount_minor,
            idempotency_key=key,
            metadata={"payment": str(payment.pk), "command": str(command.pk)},
        )
    return gateway.transfer_create(  # type: ignore[no-any-return]
        amount_minor=command.amount_minor,
        currency=payment.currency,
        destination=command.destination,
        idempotency_key=key,
        metadata={"payment": str(payment.pk), "command": str(command.pk)},
        # Tied to the client's charge, the transfer waits for its funds instead of failing.
        source_transaction=payment.charge_id,
    )


def _command_reconcile(gateway: Any, command: PaymentCommand, error: str) -> Intent | str:
    """What the provider holds decides: the effect is there (success) or it cannot be."""
    if command.kind not in (CommandKind.CAPTURE, CommandKind.CANCEL):
        return f"failed:{error}"
    intent: Intent = gateway.intent_retrieve(command.payment.intent_id)
    wanted = "succeeded" if command.kind == CommandKind.CAPTURE else "canceled"
    if intent.status == wanted:
        return intent
    return f"failed:{error} (the provider holds it as {intent.status})"


def _command_succeed(command: PaymentCommand, outcome: Intent | str) -> None:
    done = {
        "state": CommandState.SUCCEEDED,
        "finished_at": timezone.now(),
        "provider_ref": outcome.id if isinstance(outcome, Intent) else outcome,
        "leased_until": None,
        "last_error": "",
    }
    marked = False
    if isinstance(outcome, Intent):
        # Applying the intent marks this command done in the same transaction.
        _payment, marked = payment_apply_intent_marking(
            command.payment_id, outcome, source=f"command {command.pk}"
        )
    if command.kind in (CommandKind.CAPTURE, CommandKind.CANCEL):
        # Their outcome is on the payment already (the intent applied above, or before by a
        # webhook, which left this command pending): nothing more to write than the
        # command's own state, which one conditional UPDATE does without the payment's lock,
        # unless applying the intent just did it.
        if not marked:
            PaymentCommand.objects.filter(pk=command.pk, state=CommandState.PENDING).update(**done)
        return
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=command.payment_id)
        changed = PaymentCommand.objects.filter(pk=command.pk, state=CommandState.PENDING).update(
            **done
        )
        if changed:
            payment_event_write(
                payment,
                f"{command.kind}_sent",
                None,
                command.amount_minor,
                ref=str(outcome),
                command=command.pk,
            )


def _command_fail(
    command: PaymentCommand, error: str, *, was: tuple[str, ...] = (CommandState.PENDING,)
) -> bool:
    """Mark the command failed (from `was`: pending, or a refund the provider took and later
    reports failed). A failed refund gives its amount back to the charge and is announced, so
    whatever decided it (a dispute) can be decided again. Returns whether this call did it."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=command.payment_id)
        changed = PaymentCommand.objects.filter(pk=command.pk, state__in=was).update(
            state=CommandState.FAILED,
            finished_at=timezone.now(),
            leased_until=None,
            last_error=error[:300],
        )
        if not changed:
            return False
        payment_event_write(
            payment,
            f"{command.kind}_failed",
            None,
            command.amount_minor or None,
            error=error,
            command=command.pk,
        )
        if command.kind == CommandKind.REFUND:
            # The refund did not happen: it no longer counts against the charge.
            Payment.objects.filter(pk=payment.pk).update(
                refunded_minor=F("refunded_minor") - command.amount_minor
            )
            payment.refresh_from_db()
            signals.payment_refund_failed.send(
                sender=Payment, payment=payment, command_id=command.pk, error=error
            )
    logger.error("payment command %s failed: %s", command.pk, error)
    return True


def refund_failed_at_provider(
    provider: str, refund_id: str, error: str, *, command_id: str = ""
) -> bool:
    """The provider reports that a refund it had accepted failed after all (the card was
    closed, the bank refused it). Found by its id, or by the command id it carries (the
    report can come before the answer to the request was recorded). Safe to hear twice;
    returns whether it changed anything."""
    ours = PaymentCommand.objects.filter(payment__provider=provider, kind=CommandKind.REFUND)
    match = Q(provider_ref=refund_id)
    if command_id.isdigit():
        match |= Q(pk=int(command_id))
    command = ours.filter(match).first()
    if command is None:
        return False  # a refund made outside Parley (the dashboard): charge.refunded tells it
    return _command_fail(command, error, was=(CommandState.PENDING, CommandState.SUCCEEDED))


def _command_retry_later(command: PaymentCommand, error: str) -> None:
    delay = min(2 ** min(command.attempts, 10) * 5, 3600)
    PaymentCommand.objects.filter(pk=command.pk, state=CommandState.PENDING).update(
        leased_until=None,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        last_error=error[:300],
    )
    logger.warning(
        "payment command %s: provider unavailable (%s); retry in %s s", command.pk, error, delay
    )


def commands_due_ids(now: datetime | None = None, limit: int = 500) -> list[int]:
    """Pending commands whose time has come and that no worker holds (the beat sweep)."""
    now = now or timezone.now()
    return list(
        PaymentCommand.objects.filter(
            Q(leased_until__isnull=True) | Q(leased_until__lt=now),
            state=CommandState.PENDING,
            next_attempt_at__lte=now,
        ).values_list("pk", flat=True)[:limit]
    )
