"""The client's receipt, emailed once when a charge is captured at the provider."""

from __future__ import annotations

from django.conf import settings
from django.urls import reverse

from accounts.services import email_queue
from billing.models import Payment
from billing.selectors import receipt_of


def receipt_email_queue(payment: Payment) -> bool:
    """Queue the receipt of a captured payment to its payer, in the caller's transaction (the
    capture's). Keyed per payment: a capture heard again (a webhook after the command's own
    answer) sends nothing more. Returns whether this call queued it."""
    receipt = receipt_of(payment)
    if receipt is None:
        return False
    _email, created = email_queue(
        key=f"payment-{payment.pk}-receipt",
        to=payment.payer.email,
        subject=f"Receipt {receipt.number}: {receipt.what}",
        template="billing/email/receipt.txt",
        context={
            "receipt": receipt,
            "receipt_url": settings.SITE_URL + reverse("billing:receipt", args=[payment.pk]),
        },
    )
    return created
