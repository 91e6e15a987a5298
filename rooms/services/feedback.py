"""What a client says about a session after it: the rating, and staff hiding one."""

from __future__ import annotations

from django.db import transaction

from accounts.models import User
from rooms.errors import RoomsError
from rooms.models import Presence, Rating, Room, RoomState, Seat
from rooms.services.records import room_event_write

REASON_MAX_LENGTH = 1000


def rating_give(room_id: int, client: User, *, stars: int, comment: str = "") -> Rating:
    """Rate a closed session the client was in (giving it again replaces the rating; one that
    staff hid stays hidden)."""
    if not 1 <= stars <= 5:
        raise RoomsError("Choose from one to five stars.")
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room_id)
        if room.state != RoomState.CLOSED:
            raise RoomsError("You can rate a session once it has ended.")
        if not Seat.objects.filter(room=room, client=client).exists():
            raise RoomsError("Only the clients of a session can rate it.")
        if not Presence.objects.filter(room=room, user=client).exists():
            raise RoomsError("You did not join this session, so there is nothing to rate.")
        rating, _ = Rating.objects.update_or_create(
            room=room,
            client=client,
            defaults={"expert_id": room.expert_id, "stars": stars, "comment": comment.strip()},
        )
        room_event_write(room, "rated", client, stars=stars)
    return rating


def rating_hide(rating_id: int, actor: User, *, reason: str) -> Rating:
    """Staff take a rating off the expert's card and page (out of the average and the
    reviews); the room's events keep who did it, when and why."""
    return _rating_hidden_set(rating_id, actor, reason=reason, hidden=True)


def rating_unhide(rating_id: int, actor: User, *, reason: str) -> Rating:
    """Staff put a hidden rating back; recorded like the hiding."""
    return _rating_hidden_set(rating_id, actor, reason=reason, hidden=False)


def _rating_hidden_set(rating_id: int, actor: User, *, reason: str, hidden: bool) -> Rating:
    if not actor.is_staff:
        raise RoomsError("Only Parley staff can hide or show a rating.")
    reason = reason.strip()
    if not reason:
        raise RoomsError("Say why: the reason is kept in the session's story.")
    if len(reason) > REASON_MAX_LENGTH:
        raise RoomsError(f"Keep the reason under {REASON_MAX_LENGTH} characters.")
    with transaction.atomic():
        # Room, then rating: the lock order of rating_give, so a client rating again while
        # staff hide it waits its turn instead of deadlocking.
        room_id = Rating.objects.values_list("room_id", flat=True).get(pk=rating_id)
        room = Room.objects.select_for_update().get(pk=room_id)
        rating = Rating.objects.select_for_update().get(pk=rating_id)
        rating.room = room
        if rating.hidden == hidden:
            state = "hidden" if hidden else "shown"
            raise RoomsError(f"This rating is already {state}.")
        rating.hidden = hidden
        rating.save(update_fields=["hidden"])
        room_event_write(
            rating.room,
            "rating_hidden" if hidden else "rating_unhidden",
            actor,
            rating=rating.pk,
            client=rating.client_id,
            reason=reason,
        )
    return rating
