"""A receipt rendered when it is sent shows the payment as it is then: a charge refunded
before its receipt went out is sent with the refund, not as a charge still owed."""

from __future__ import annotations

import pytest
from django.core import mail

from accounts.models import OutboundEmail
from accounts.services import email_send
from billing import services
from billing.tests.helpers import commands_run_pending
from rooms.tests.factories import room_closed_after_a_call, seat_booked

pytestmark = pytest.mark.django_db


def test_a_receipt_sent_after_a_full_refund_says_the_charge_was_refunded() -> None:
    seat = seat_booked()
    room_closed_after_a_call(seat)
    assert seat.payment_id is not None
    commands_run_pending()  # the capture queues the receipt, not sent yet
    receipt = OutboundEmail.objects.get(key=f"payment-{seat.payment_id}-receipt")
    services.payment_refund(
        seat.payment_id, amount_minor=12000, currency="EUR", reason="call dropped", actor=None
    )
    commands_run_pending()
    mail.outbox.clear()
    assert email_send(receipt.pk)
    [sent] = mail.outbox
    assert "(call dropped)" in sent.body
    assert "You paid:           0.00 EUR" in sent.body
