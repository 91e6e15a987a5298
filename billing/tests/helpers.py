"""Helpers the billing and rooms tests share."""

from __future__ import annotations

from billing import services
from billing.models import CommandState, PaymentCommand


def commands_run_pending() -> list[str]:
    """Send every pending payment command now, as the worker would; their states after."""
    ids = PaymentCommand.objects.filter(state=CommandState.PENDING).values_list("pk", flat=True)
    return [services.command_execute(pk) for pk in ids]
