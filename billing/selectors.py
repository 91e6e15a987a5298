"""Reads of billing that other layers need."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import QuerySet

from accounts.models import User
from billing.models import Payment, PaymentState, Settlement


def hold_valid_until(payment: Payment) -> datetime | None:
    """Until when an authorized hold can safely be captured (card holds lapse after ~7 days);
    None when the payment holds nothing yet."""
    if payment.state != PaymentState.AUTHORIZED:
        return None
    authorized = payment.events.filter(kind=PaymentState.AUTHORIZED).order_by("pk").first()
    if authorized is None:
        return None
    authorized_at: datetime = authorized.created_at
    return authorized_at + timedelta(days=settings.HOLD_LATER_AFTER_DAYS)


def dispute_window_ends(settlement: Settlement) -> datetime:
    """Until when the client may dispute a settled charge: DISPUTE_WINDOW_HOURS after it was
    settled, and never past the moment its payout may leave for the expert."""
    window_end: datetime = settlement.created_at + timedelta(hours=settings.DISPUTE_WINDOW_HOURS)
    payout_due: datetime = settlement.payout_due_at
    return min(window_end, payout_due)


def settlements_of_payee(user: User, limit: int = 50) -> QuerySet[Settlement]:
    """An expert's earnings, newest first, with their payout commands."""
    return (
        Settlement.objects.filter(payment__payee=user, amount_minor__gt=0)
        .select_related("payment")
        .prefetch_related("payment__commands")[:limit]
    )
