"""Celery tasks of billing: each takes an id, calls one service, and is safe to run twice."""

from __future__ import annotations

from celery import shared_task

from billing import services


@shared_task
def command_execute_task(command_id: int) -> str:
    return services.command_execute(command_id)


@shared_task
def commands_execute_task(command_ids: list[int]) -> dict[str, int]:
    """The commands of one batch of decisions (a sweep's closes), sent one after the other."""
    return services.commands_execute(command_ids)


@shared_task
def commands_send_due() -> int:
    """Safety net: commands whose task was lost, or that wait for a retry (beat)."""
    ids = services.commands_due_ids()
    for command_id in ids:
        command_execute_task.delay(command_id)
    return len(ids)


@shared_task
def webhook_process_task(event_id: int) -> bool:
    return services.webhook_process(event_id)


@shared_task
def webhooks_process_pending() -> int:
    ids = services.webhooks_pending_ids()
    for event_id in ids:
        webhook_process_task.delay(event_id)
    return len(ids)


@shared_task
def payment_hold_place_task(payment_id: int) -> None:
    services.payment_hold_place(payment_id)


@shared_task
def holds_place_due() -> int:
    ids = services.holds_due_ids()
    for payment_id in ids:
        payment_hold_place_task.delay(payment_id)
    return len(ids)


@shared_task
def payouts_due_create() -> int:
    return services.payouts_due_create()
