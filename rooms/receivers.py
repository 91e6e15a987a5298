"""Rooms' answers to what billing reports (billing may not import rooms: STYLE.md layers)."""

from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from billing.models import Payment
from billing.signals import payment_authorized, payment_card_saved
from rooms import services


@receiver(payment_authorized)
def on_payment_authorized(sender: Any, payment: Payment, **kwargs: Any) -> None:
    services.seat_payment_authorized(payment)


@receiver(payment_card_saved)
def on_payment_card_saved(sender: Any, payment: Payment, **kwargs: Any) -> None:
    services.seat_payment_card_saved(payment)
