"""What a client says about a session after it: the rating."""

from __future__ import annotations

from django.db import transaction

from accounts.models import User
from rooms.errors import RoomsError
from rooms.models import Presence, Rating, Room, RoomState, Seat
from rooms.services.records import room_event_write


def rating_give(room_id: int, client: User, *, stars: int, comment: str = "") -> Rating:
    """Rate a closed session the client was in (giving it again replaces the rating)."""
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
