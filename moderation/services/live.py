"""Staff acting on live rooms: end a room, remove a participant, ban a user. Each takes effect
on every Daphne process through the channel layer once it commits (the room services send the
close after commit), and each writes a staff action with its reason in the same transaction."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from accounts import services as accounts
from accounts.errors import AccountsError
from accounts.models import User
from moderation.models import StaffActionKind
from moderation.services.errors import ModerationError
from moderation.services.staff import staff_action_write, staff_check
from rooms import services as rooms
from rooms.errors import RoomsError
from rooms.models import CloseReason, Presence, Room, RoomState


def staff_room_end(room_id: int, *, actor: User, reason: str) -> Room:
    """End a room for everyone. A live one closes and its seats settle as at any close (a
    client who had not come yet owes nothing); one nobody has met in yet is canceled, every
    client released in full."""
    reason = staff_check(actor, reason)
    now = timezone.now()
    with transaction.atomic():
        state = Room.objects.values_list("state", flat=True).filter(pk=room_id).first()
        if state is None:
            raise ModerationError("There is no such room.")
        if state in (RoomState.CLOSED, RoomState.CANCELED):
            raise ModerationError("This room had already ended.")
        try:
            if state == RoomState.LIVE:
                room = rooms.room_close(
                    room_id, reason=CloseReason.TERMINATED_BY_STAFF, actor=actor, now=now
                )
                # A room already closed (by its timer, its expert, or a colleague a moment
                # ago) is returned as it was: this call did not end it.
                if room.closed_at != now:
                    raise ModerationError(
                        f"This room had already ended ({room.get_close_reason_display().lower()})."
                    )
            else:
                room = rooms.room_cancel_by_staff(room_id, actor=actor)
        except RoomsError as refused:
            raise ModerationError(
                f"{refused} It changed a moment ago: look at the room again."
            ) from None
        staff_action_write(actor, StaffActionKind.ROOM_END, reason, room=room)
    return room


def staff_participant_remove(room_id: int, user_id: int, *, actor: User, reason: str) -> bool:
    """Take one person out of a room for good; their socket is told why and closed."""
    reason = staff_check(actor, reason)
    with transaction.atomic():
        room = Room.objects.get(pk=room_id)
        if room.state not in (RoomState.OPEN, RoomState.LIVE):
            raise ModerationError("This room is not open or live; there is nobody to remove.")
        user = User.objects.get(pk=user_id)
        if user.pk == room.expert_id:
            raise ModerationError(
                "The expert hosts the room: end the room instead of removing its host."
            )
        was_in = rooms.participant_remove(
            room.pk,
            user,
            reason=reason,
            actor=actor,
            notice=f"Parley staff removed you from this session: {reason}",
        )
        staff_action_write(
            actor,
            StaffActionKind.PARTICIPANT_REMOVE,
            reason,
            room=room,
            subject=user,
            data={"was_in_the_room": was_in},
        )
    return was_in


def staff_user_ban(user_id: int, *, actor: User, reason: str) -> list[int]:
    """Suspend an account and take it out of every room it is in now: rooms it hosts end,
    rooms it sits in go on without it; its sessions that have not started are canceled with
    nothing charged. Returns the ids of the rooms in progress it was taken out of."""
    reason = staff_check(actor, reason)
    with transaction.atomic():
        try:
            user = accounts.user_ban(user_id, actor=actor)
        except AccountsError as refused:
            raise ModerationError(str(refused)) from None
        affected: list[int] = []
        try:
            # First the sessions not live yet, canceled free (closing a lobby would price the
            # clients who did not come as no-shows); then the live ones.
            canceled = rooms.bookings_cancel_for_suspension(user, actor=actor)
            for room in Room.objects.filter(expert=user, state=RoomState.LIVE):
                rooms.room_close(room.pk, reason=CloseReason.TERMINATED_BY_STAFF, actor=actor)
                affected.append(room.pk)
            sitting_in = (
                Presence.objects.filter(
                    user=user, closed_at__isnull=True, room__state=RoomState.LIVE
                )
                .exclude(room__expert=user)
                .values_list("room_id", flat=True)
                .distinct()
            )
            for room_id in list(sitting_in):
                rooms.participant_remove(
                    room_id,
                    user,
                    reason="account suspended",
                    actor=actor,
                    notice="Your Parley account is suspended; contact support if you think this "
                    "is a mistake.",
                )
                affected.append(room_id)
        except RoomsError as refused:
            raise ModerationError(str(refused)) from None
        staff_action_write(
            actor,
            StaffActionKind.USER_BAN,
            reason,
            subject=user,
            data={"rooms": affected, "upcoming_canceled": canceled},
        )
    return affected


def staff_user_unban(user_id: int, *, actor: User, reason: str) -> User:
    reason = staff_check(actor, reason)
    with transaction.atomic():
        try:
            user = accounts.user_unban(user_id, actor=actor)
        except AccountsError as refused:
            raise ModerationError(str(refused)) from None
        staff_action_write(actor, StaffActionKind.USER_UNBAN, reason, subject=user)
    return user
