from __future__ import annotations

from celery import shared_task

from rooms import services


@shared_task
def reservations_expire() -> int:
    return services.reservations_expire()


@shared_task
def reminders_queue() -> int:
    return services.reminders_queue()


@shared_task
def rooms_advance() -> dict[str, int]:
    """Open lobbies, close rooms at their time limit, on no-shows and when empty (beat every
    10 s, and scheduled for the exact moments of each room)."""
    # Stale connections first, so an empty room is seen as empty.
    services.presences_sweep_stale()
    return services.rooms_advance()


@shared_task
def presence_grace_end(room_id: int, user_id: int) -> bool:
    """The grace after a participant's drop has passed: tell the peers if they are gone."""
    return services.presence_grace_check(room_id, user_id)
