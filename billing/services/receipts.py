"""The client's receipt, emailed once when a charge is captured at the provider."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse

from accounts.services import (
    EmailContent,
    EmailToRender,
    email_render,
    email_renderer,
    emails_queue_to_render,
)
from billing.models import Payment, PaymentState
from billing.selectors import payment_subject, receipt_number, receipt_of

RECEIPT_RENDERER = "billing.receipt"


def receipt_email_queue(payment: Payment) -> bool:
    """Queue the receipt of a captured payment to its payer, in the caller's transaction (the
    capture's). Keyed per payment: a capture heard again (a webhook after the command's own
    answer) sends nothing more. Returns whether this call queued it.

    The capture holds the payment's row lock: the receipt is one INSERT here and is built and
    rendered when it is sent (`receipt_email_render`), outside any transaction. `payment` comes
    with its payer and payee (the subject names the other person)."""
    if payment.state != PaymentState.CAPTURED or payment.captured_minor == 0:
        return False
    created = emails_queue_to_render(
        [
            EmailToRender(
                key=f"payment-{payment.pk}-receipt",
                to=payment.payer.email,
                subject=f"Receipt {receipt_number(payment)}: "
                f"{payment_subject(payment, payment.payer)}",
                renderer=RECEIPT_RENDERER,
                args={"payment": payment.pk},
            )
        ]
    )
    return bool(created)


@email_renderer(RECEIPT_RENDERER)
def receipt_email_render(args: dict[str, Any]) -> EmailContent:
    """The receipt email from the payment as it is when the email is sent (the page shows the
    same, `receipt_of`)."""
    payment = Payment.objects.select_related("payer", "payee").get(pk=args["payment"])
    receipt = receipt_of(payment)
    if receipt is None:
        raise ValueError(f"Payment {payment.pk} has no charge to give a receipt for.")
    body, html = email_render(
        "billing/email/receipt.txt",
        {
            "receipt": receipt,
            "receipt_url": settings.SITE_URL + reverse("billing:receipt", args=[payment.pk]),
        },
    )
    return EmailContent(body=body, html=html)
