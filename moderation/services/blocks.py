"""Blocks as people make them: the relation itself is accounts'; here a block also keeps the
pair apart in a session they are in right now and cancels the ones they have not had yet.
Blocking and unblocking each write a BlockEvent (who, whom, when, why) in their transaction."""

from __future__ import annotations

from django.db import transaction
from django.db.models import Q

from accounts import services as accounts
from accounts.errors import AccountsError
from accounts.models import Block, User
from moderation.models import BlockEvent, BlockEventKind
from moderation.services.errors import ModerationError
from rooms import services as rooms
from rooms.errors import RoomsError
from rooms.models import Room, RoomState, SeatState
from rooms.services.records import room_event_write


def block_create(blocker: User, blocked_id: int, *, reason: str = "") -> Block:
    """`blocker` blocks someone: from now on neither can book or join the other's sessions; a
    live session of the two ends for the pair at once (a private one ends; from a group one
    the client is taken out), and their sessions not live yet are canceled with nothing
    charged. Blocking twice changes nothing more."""
    with transaction.atomic():
        try:
            made, created = accounts.block_create(blocker, blocked_id, reason=reason)
        except AccountsError as refused:
            raise ModerationError(str(refused)) from None
        if not created:
            return made
        BlockEvent.objects.create(
            blocker=blocker, blocked_id=blocked_id, kind=BlockEventKind.CREATED, reason=made.reason
        )
        confirmed = SeatState.CONFIRMED
        pair = Q(expert=blocker, seats__client_id=blocked_id, seats__state=confirmed) | Q(
            expert_id=blocked_id, seats__client=blocker, seats__state=confirmed
        )
        try:
            # First the sessions of the two not live yet (booked, or a lobby where they have
            # not met), canceled free: the client could not join, and would otherwise be
            # priced as a no-show. Then the live ones, read after: a lobby that went live
            # meanwhile is among them.
            for expert_id, client_id in ((blocker.pk, blocked_id), (blocked_id, blocker.pk)):
                for room_id in rooms.bookings_cancel_for_block(expert_id, client_id, actor=blocker):
                    room = Room.objects.get(pk=room_id)
                    room_event_write(room, "pair_blocked", blocker, blocked=blocked_id)
            for room in Room.objects.filter(pair, state=RoomState.LIVE).distinct():
                client_id = blocked_id if room.expert_id == blocker.pk else blocker.pk
                # Staff read this in the room's story; neither participant is told of it.
                room_event_write(room, "pair_blocked", blocker, blocked=blocked_id)
                rooms.pair_separate(room.pk, User.objects.get(pk=client_id), blocker=blocker)
        except RoomsError as refused:
            raise ModerationError(str(refused)) from None
    return made


def block_remove(blocker: User, blocked_id: int) -> bool:
    """Lift one's own block (a block by the other person stays). Returns whether there was one;
    lifting a block that is not there changes nothing and logs nothing."""
    with transaction.atomic():
        removed = accounts.block_remove(blocker, blocked_id)
        if removed:
            BlockEvent.objects.create(
                blocker=blocker, blocked_id=blocked_id, kind=BlockEventKind.REMOVED
            )
    return removed
