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
    return services.rooms_advance(hand_off=_close_elsewhere)


def _close_elsewhere(room_ids: list[int]) -> None:
    rooms_close_due.delay(room_ids)


@shared_task
def rooms_close_due(room_ids: list[int]) -> dict[str, int]:
    """A batch of rooms a sweep found due to close when many were due at once (sessions end on
    the hour), so that every worker shares them; each is decided again under its lock, and a
    batch delivered twice closes nothing twice."""
    return services.rooms_close_due(room_ids)


@shared_task
def presence_grace_end(room_id: int, user_id: int) -> bool:
    """The grace after a participant's drop has passed: tell the peers if they are gone."""
    return services.presence_grace_check(room_id, user_id)
