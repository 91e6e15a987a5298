"""Moderation's answers to what the layers below report (STYLE.md: they declare signals, this
layer receives and calls its own service; no logic here)."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from billing.models import Payment
from billing.signals import payment_dispute_closed, payment_disputed, payment_refund_failed
from moderation import services
from rooms.models import CloseReason, Room
from rooms.signals import room_closed


@receiver(room_closed)
def on_room_closed(sender: Any, room: Room, reason: str, **kwargs: Any) -> None:
    if reason == CloseReason.EXPERT_NO_SHOW:
        services.report_file_expert_no_show(room)


@receiver(payment_disputed)
def on_payment_disputed(
    sender: Any, payment: Payment, dispute_id: str, reason: str, **kwargs: Any
) -> None:
    services.dispute_open_chargeback(payment, provider_dispute_id=dispute_id, reason=reason)


@receiver(payment_dispute_closed)
def on_payment_dispute_closed(
    sender: Any, payment: Payment, dispute_id: str, status: str, **kwargs: Any
) -> None:
    services.dispute_chargeback_closed(payment, provider_dispute_id=dispute_id, status=status)


@receiver(payment_refund_failed)
def on_payment_refund_failed(
    sender: Any, payment: Payment, command_id: int, error: str, **kwargs: Any
) -> None:
    services.dispute_refund_failed(payment, command_id=command_id, error=error)
