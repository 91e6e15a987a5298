"""What every billing service shares: the payment event log and the command outbox writer."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from accounts.models import User
from billing.models import (
    CommandKind,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
)

HOLD_ENDING_COMMANDS = (CommandKind.CAPTURE, CommandKind.CANCEL)


# States from which a payment has no hold yet.
UNPAID_STATES = (PaymentState.PENDING, PaymentState.CARD_SAVED)


def payment_event_write(
    payment: Payment, kind: str, actor: User | None, amount_minor: int | None, **data: Any
) -> PaymentEvent:
    """One line of the payment's history (PaymentEvent): what happened, who did it (None:
    Parley or the provider), the amount it moved and its details. A room's lines are rooms'
    `room_event_write`."""
    event = payment_event_new(payment, kind, actor, amount_minor, **data)
    event.save()
    return event


def payment_event_new(
    payment: Payment, kind: str, actor: User | None, amount_minor: int | None, **data: Any
) -> PaymentEvent:
    """`payment_event_write` without the write: for a caller that writes it together with the
    next one (`command_write`'s `written_with`)."""
    return PaymentEvent(
        payment=payment, kind=kind, actor=actor, amount_minor=amount_minor, data=data
    )


def command_write(
    payment: Payment,
    kind: str,
    amount_minor: int,
    reason: str,
    *,
    written_with: PaymentEvent | None = None,
) -> PaymentCommand:
    """Put a command in the outbox, with its event; sent by a worker after commit.
    `written_with`: an unsaved event of the same decision (the settlement), written before the
    command's own in one INSERT."""
    from billing.tasks import command_execute_task

    command = PaymentCommand.objects.create(
        payment=payment, kind=kind, amount_minor=amount_minor, reason=reason[:200]
    )
    requested = payment_event_new(
        payment, f"{kind}_requested", None, amount_minor or None, command=command.pk
    )
    PaymentEvent.objects.bulk_create([e for e in (written_with, requested) if e is not None])
    # robust: a broker that is down must not undo the decision; the sweep sends it later.
    transaction.on_commit(lambda: command_execute_task.delay(command.pk), robust=True)
    return command
