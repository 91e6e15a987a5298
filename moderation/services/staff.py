"""What every staff action shares: the check that the actor is staff, and its audit row."""

from __future__ import annotations

from typing import Any

from accounts.models import User
from moderation.models import StaffAction
from moderation.services.errors import ModerationError


def staff_check(actor: User, reason: str) -> str:
    """The actor is active staff and said why; returns the reason, trimmed. (The admin also
    asks for a session that passed two-factor authentication: config/admin.py.)"""
    if not (actor.is_authenticated and actor.is_active and actor.is_staff):
        raise ModerationError("Only Parley staff can do this.")
    reason = reason.strip()
    if not reason:
        raise ModerationError(
            "Give a reason: it is kept with the action for whoever reads it later."
        )
    return reason


def staff_action_write(actor: User, kind: str, reason: str, **targets: Any) -> StaffAction:
    return StaffAction.objects.create(actor=actor, kind=kind, reason=reason, **targets)
