from __future__ import annotations

from celery import shared_task

from rooms import services


@shared_task
def reservations_expire() -> int:
    return services.reservations_expire()


@shared_task
def reminders_queue() -> int:
    return services.reminders_queue()
