"""What every billing service shares: the payment event log and the command outbox writer."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, transaction

from accounts.models import User
from accounts.sql import cursor_prepared, insert_select, saved
from billing.models import (
    CommandKind,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
    Settlement,
)

logger = logging.getLogger(__name__)

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
    decided_by: Settlement | None = None,
) -> PaymentCommand:
    """Put a command in the outbox, with its event; sent by a worker after commit.
    `written_with`: an unsaved event of the same decision (the settlement), written before the
    command's own. `decided_by`: the unsaved settlement that decided the command, written with
    it. On PostgreSQL all of them are one statement (`_command_insert_statement`)."""
    command = PaymentCommand(
        payment=payment, kind=kind, amount_minor=amount_minor, reason=reason[:200]
    )
    requested = payment_event_new(payment, f"{kind}_requested", None, amount_minor or None)
    if connection.vendor == "postgresql":
        _command_insert_statement(command, requested, written_with, decided_by)
    else:
        if decided_by is not None:
            decided_by.save(force_insert=True)
        command.save(force_insert=True)
        requested.data["command"] = command.pk
        PaymentEvent.objects.bulk_create([e for e in (written_with, requested) if e is not None])
    # robust: a broker that is down must not undo the decision; the sweep sends it later.
    transaction.on_commit(lambda: _command_dispatch(command.pk), robust=True)
    return command


def _command_insert_statement(
    command: PaymentCommand,
    requested: PaymentEvent,
    written_with: PaymentEvent | None,
    decided_by: Settlement | None,
) -> None:
    """`command_write`'s rows in one prepared statement: every room close settles its seats
    this way (a settlement, its event, the capture and its event), and the ORM's four saves
    were four round trips and more Python than PostgreSQL spent on them. The command's event
    is inserted from the other rows' RETURNING rows, so it is written after the earlier event
    and the payment's history keeps its order (a statement's CTEs otherwise run in no set
    order)."""
    written = [
        (name, row)
        for name, row in (
            ("settlement", decided_by),
            ("command", command),
            ("earlier", written_with),
        )
        if row is not None
    ]
    parts: list[str] = []
    params: list[Any] = []
    for name, row in written:
        sql, more = insert_select(row)
        parts.append(f"{name} AS ({sql} RETURNING id)")
        params += more
    names = ", ".join(name for name, _ in written)
    sql, more = insert_select(
        requested,
        computed={"data": ("jsonb_build_object('command', command.id)", ())},
        source=names,
    )
    parts.append(f"requested AS ({sql})")
    params += more
    with cursor_prepared() as cursor:
        cursor.execute(
            f"WITH {', '.join(parts)} SELECT {', '.join(f'{name}.id' for name, _ in written)}"  # noqa: S608 - built from the models; values are parameters
            f" FROM {names}",
            params,
        )
        ids = cursor.fetchone()
    for (_, row), pk in zip(written, ids, strict=True):
        saved(row, pk)
    requested.data["command"] = command.pk


# Commands held by `commands_batched` in this thread, in the order their transactions committed.
_held = threading.local()


def _command_dispatch(command_id: int) -> None:
    held = getattr(_held, "commands", None)
    if held is not None:
        held.append(command_id)
        return
    from billing.tasks import command_execute_task

    command_execute_task.delay(command_id)


@contextmanager
def commands_batched() -> Iterator[None]:
    """Commands written (and committed) inside the block go to the workers in one message when
    it ends, run one after the other by one task (`commands_execute_task`), instead of a
    message and a task each. A sweep closing a batch of rooms writes a capture per seat: a
    task costs a worker more than a capture at the provider does. Each command is still
    sent only after its transaction committed, at most the block's length later, and the
    outbox sweep sends any the message loses. Nested blocks send with the outermost."""
    if getattr(_held, "commands", None) is not None:
        yield
        return
    _held.commands = []
    try:
        yield
    finally:
        commands, _held.commands = _held.commands, None
        if commands:
            _commands_dispatch(commands)


def _commands_dispatch(command_ids: list[int]) -> None:
    from billing.tasks import command_execute_task, commands_execute_task

    try:
        if len(command_ids) == 1:
            command_execute_task.delay(command_ids[0])
        else:
            commands_execute_task.delay(command_ids)
    except Exception:
        # As a single dispatch after commit (robust): the decisions stand, and the outbox
        # sweep (`commands_send_due`) sends them.
        logger.exception("Handing %s payment commands to the workers failed.", len(command_ids))
