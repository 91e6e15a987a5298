"""What the room services tell the room's sockets, sent through the channel layer after commit.

Every socket of a room is in the room's group, and in a group of its own participant (at most one
open connection per participant and room, but during a replacement the old and the new socket are
both in it for a moment). Messages go out only once the transaction that caused them has
committed: a peer never hears of a join or a close that then rolled back. The channel layer is
at-most-once, so nothing here is the only record of anything (docs/SIGNALING.md, Delivery).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction


def room_group(room_id: int) -> str:
    return f"room.{room_id}"


def participant_group(room_id: int, user_id: int) -> str:
    return f"room.{room_id}.user.{user_id}"


def room_tell(room_id: int, event: dict[str, Any], *, about: int | None = None) -> None:
    """After commit, send a protocol message to every socket of the room; `about` is the
    participant it concerns, who is not told about themself."""
    _after_commit(room_group(room_id), {"type": "room.event", "event": event, "about": about})


def room_send(room_id: int, message: dict[str, Any]) -> None:
    """After commit, a channel-layer message (with its handler `type`) to the room's sockets."""
    _after_commit(room_group(room_id), message)


def participant_send(room_id: int, user_id: int, message: dict[str, Any]) -> None:
    """After commit, a channel-layer message to one participant's socket(s)."""
    _after_commit(participant_group(room_id, user_id), message)


def _after_commit(group: str, message: dict[str, Any]) -> None:
    # robust: a broadcast that cannot be sent is logged and must not undo what committed;
    # sockets recover the state from the database when they reconnect.
    transaction.on_commit(lambda: _group_send(group, message), robust=True)


def _group_send(group: str, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is not None:
        async_to_sync(layer.group_send)(group, message)
