"""Blocks as people make them: the relation itself is accounts'; here a block also keeps the
pair apart in any session they are in right now."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from accounts import services as accounts
from accounts.errors import AccountsError
from accounts.models import Block, User
from moderation.services.errors import ModerationError
from rooms import services as rooms
from rooms.errors import RoomsError
from rooms.models import Room, RoomState, SeatState
from rooms.services.records import event_write


def block(blocker: User, blocked_id: int, *, reason: str = "") -> Block:
    """`blocker` blocks someone: from now on neither can book or join the other's sessions,
    and a session of the two that is open or live ends for the pair at once (a private one
    ends; from a group one the client is taken out). Blocking twice changes nothing more."""
    with transaction.atomic():
        try:
            made, created = accounts.block_create(blocker, blocked_id, reason=reason)
        except AccountsError as refused:
            raise ModerationError(str(refused)) from None
        if not created:
            return made
        pair = Q(expert=blocker, seats__client_id=blocked_id) | Q(
            expert_id=blocked_id, seats__client=blocker
        )
        rooms_now = (
            Room.objects.filter(pair, state__in=(RoomState.OPEN, RoomState.LIVE))
            .filter(seats__state=SeatState.CONFIRMED)
            .distinct()
        )
        for room in rooms_now:
            client_id = blocked_id if room.expert_id == blocker.pk else blocker.pk
            # Staff read this in the room's story; neither participant is told of the block.
            event_write(room, "pair_blocked", blocker, blocked=blocked_id)
            try:
                rooms.pair_separate(room.pk, User.objects.get(pk=client_id), blocker=blocker)
            except RoomsError as refused:
                raise ModerationError(str(refused)) from None
    return made


def unblock(blocker: User, blocked_id: int) -> bool:
    """Lift one's own block (a block by the other person stays)."""
    return accounts.block_remove(blocker, blocked_id)
