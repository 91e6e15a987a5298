"""Experts' payout accounts and the transfers of their share after the dispute window."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from accounts.models import User
from billing.errors import PaymentRefused
from billing.gateways import gateway_for
from billing.models import (
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
    PaymentState,
    PayoutAccount,
    Settlement,
)
from billing.pricing import payout_after_refunds
from billing.services.records import (
    command_write,
    payment_event_write,
)


def payouts_due_create(now: datetime | None = None) -> int:
    """Write a transfer for every settlement past its dispute window with no hold on it,
    whose expert can be paid (beat). The unique live transfer per payment makes it safe to
    repeat."""
    now = now or timezone.now()
    due = (
        Settlement.objects.filter(
            # Strictly after: a dispute opened at the window's last instant still holds it.
            payout_due_at__lt=now,
            payout_held=False,
            payout_minor__gt=0,
            payment__state=PaymentState.CAPTURED,
            payment__payee__payout_account__payouts_enabled=True,
        )
        .exclude(Exists(_transfers_blocking(OuterRef("payment"))))
        .exclude(Exists(_refunds_pending(OuterRef("payment"))))
    )
    created = 0
    for settlement_id in due.values_list("pk", flat=True)[:500]:
        with transaction.atomic():
            payment_id = Settlement.objects.values_list("payment_id", flat=True).get(
                pk=settlement_id
            )
            payment = Payment.objects.select_for_update().get(pk=payment_id)
            # Read under the payment's lock: a hold or a refund decided a moment ago (a
            # dispute, a chargeback) is seen here, never an older copy.
            settlement = Settlement.objects.get(pk=settlement_id)
            if (
                settlement.payout_held
                or _transfers_blocking(payment.pk).exists()
                or _refunds_pending(payment.pk).exists()
            ):
                continue
            # What the expert earns shrinks with what was refunded to the client.
            amount = payout_after_refunds(
                payout_minor=settlement.payout_minor,
                refunded_minor=payment.refunded_minor,
                fee_percent=settings.PLATFORM_FEE_PERCENT,
            )
            if amount <= 0:
                continue
            account = PayoutAccount.objects.get(user_id=payment.payee_id)
            command = command_write(
                payment, CommandKind.TRANSFER, amount, "payout after the dispute window"
            )
            PaymentCommand.objects.filter(pk=command.pk).update(destination=account.account_id)
            created += 1
    return created


def _transfers_blocking(payment: Any) -> QuerySet[PaymentCommand]:
    """A transfer waiting or done blocks another. A failed one blocks too until the expert's
    payout account changes after it (a new status from the provider): trying the same
    account again every sweep would fail the same way."""
    account_changed_at = Coalesce(
        "payment__payee__payout_account__status_at", Value(datetime.min.replace(tzinfo=UTC))
    )
    return PaymentCommand.objects.filter(payment=payment, kind=CommandKind.TRANSFER).filter(
        ~Q(state=CommandState.FAILED) | Q(finished_at__gte=account_changed_at)
    )


def _refunds_pending(payment: Any) -> QuerySet[PaymentCommand]:
    """A refund not sent yet may still fail (and give the money back to the charge), so the
    expert's share waits until it is settled either way."""
    return PaymentCommand.objects.filter(
        payment=payment, kind=CommandKind.REFUND, state=CommandState.PENDING
    )


def payout_hold(payment_id: int, *, reason: str, actor: User | None = None) -> bool:
    """Keep the expert's share of this payment back (a dispute is open on it). Inside the
    caller's transaction; returns whether the payout was free before."""
    return _payout_hold_set(payment_id, True, reason=reason, actor=actor)


def payout_hold_lift(payment_id: int, *, reason: str, actor: User | None = None) -> bool:
    """Let the payout go out again (the dispute behind the hold is decided). Returns whether
    it was held."""
    return _payout_hold_set(payment_id, False, reason=reason, actor=actor)


def _payout_hold_set(payment_id: int, held: bool, *, reason: str, actor: User | None) -> bool:
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        settlement = Settlement.objects.filter(payment=payment).first()
        if settlement is None:
            raise PaymentRefused("This payment is not settled; it has no payout to hold.")
        sent = payment.commands.filter(kind=CommandKind.TRANSFER).exclude(state=CommandState.FAILED)
        if held and sent.exists():
            # Already sent to the expert: there is nothing left to keep back, but the event
            # says staff wanted it held, so the case shows in the payment's history.
            payment_event_write(payment, "payout_hold_too_late", actor, None, reason=reason)
            return False
        if settlement.payout_held == held:
            return False
        Settlement.objects.filter(pk=settlement.pk).update(payout_held=held)
        payment_event_write(
            payment, "payout_held" if held else "payout_released", actor, None, reason=reason
        )
        return True


def payout_account_link(user: User, *, refresh_url: str, return_url: str) -> str:
    """Where the expert goes to connect (or finish connecting) their payout account."""
    gateway = gateway_for(settings.PAYMENT_PROVIDER)
    account = PayoutAccount.objects.filter(user=user).first()
    if account is None:
        account_id = gateway.account_create(
            email=user.email, idempotency_key=f"parley-user-{user.pk}-payout-account"
        )
        account, _ = PayoutAccount.objects.get_or_create(
            user=user, defaults={"provider": gateway.name, "account_id": account_id}
        )
    return gateway.account_link(account.account_id, refresh_url=refresh_url, return_url=return_url)


def payout_account_refresh(user: User) -> PayoutAccount | None:
    """Read the account's status from the provider (after the expert returns from it)."""
    account = PayoutAccount.objects.filter(user=user).first()
    if account is None:
        return None
    details, payouts = gateway_for(account.provider).account_status(account.account_id)
    PayoutAccount.objects.filter(pk=account.pk).update(
        details_submitted=details,
        payouts_enabled=payouts,
        status_at=timezone.now(),
        updated_at=timezone.now(),
    )
    account.refresh_from_db()
    return account
