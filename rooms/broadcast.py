"""What the room services tell the room's sockets, sent through the channel layer after commit.

Every socket of a room is in the room's group, and in a group of its own participant (at most one
open connection per participant and room, but during a replacement the old and the new socket are
both in it for a moment). Messages go out only once the transaction that caused them has
committed: a peer never hears of a join or a close that then rolled back. The channel layer is
at-most-once, so nothing here is the only record of anything (docs/SIGNALING.md, Delivery).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

# Messages held by `batched` in this thread: (group, message), in the order they were due.
_held = threading.local()


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


@contextmanager
def batched() -> Iterator[None]:
    """Messages due (after their commits) inside the block are sent together when it ends, in
    one pass of one event loop. From sync code each send otherwise costs an event loop of its
    own and, with the Redis layer, a new connection (some 3 ms): a sweep closing a batch of
    rooms pays that once. Each message still goes only once its transaction has committed;
    the block delays it by at most the block's length. Nested blocks send with the outermost."""
    if getattr(_held, "messages", None) is not None:
        yield
        return
    _held.messages = []
    try:
        yield
    finally:
        messages, _held.messages = _held.messages, None
        if messages:
            _send(messages)


@contextmanager
def held() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Messages due (after their commits) inside the block are handed to the caller, who sends
    them from an event loop with `held_send`: a socket's join reads its `welcome` while the
    peers' news goes out, instead of after each send (a hop from the database thread to the
    event loop and a Redis round trip). Each message still goes only once its transaction has
    committed. If the block raises, what it holds is sent at once, as `batched` would. Inside
    another block, that block sends them."""
    if getattr(_held, "messages", None) is not None:
        yield []
        return
    messages: list[tuple[str, dict[str, Any]]] = []
    _held.messages = messages
    try:
        yield messages
    except BaseException:
        _held.messages = None
        if messages:
            _send(messages)
        raise
    finally:
        _held.messages = None


async def held_send(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send what `held` handed over (or `batched` gathered), in order, from async code."""
    layer = get_channel_layer()
    if layer is None:
        return
    for group, message in messages:
        try:
            await layer.group_send(group, message)
        except Exception:
            # As a single send after commit (robust): logged, and never undoes what
            # committed; the sockets recover the state from the database.
            logger.exception("Sending %s to %s failed.", message.get("type"), group)


def _group_send(group: str, message: dict[str, Any]) -> None:
    held = getattr(_held, "messages", None)
    if held is not None:
        held.append((group, message))
        return
    layer = get_channel_layer()
    if layer is None:
        return
    if _blocking(layer):
        layer.group_send_blocking([(group, message)])
    else:
        async_to_sync(layer.group_send)(group, message)


def _send(messages: list[tuple[str, dict[str, Any]]]) -> None:
    layer = get_channel_layer()
    if layer is None or not _blocking(layer):
        async_to_sync(held_send)(messages)
        return
    try:
        layer.group_send_blocking(messages)
    except Exception:
        # As held_send: logged, and never undoes what committed.
        logger.exception("Sending %d message(s) of a batch failed.", len(messages))


def _blocking(layer: Any) -> bool:
    """Whether sync code publishes with the layer's own blocking client (rooms/layers.py:
    Redis in production) rather than through an event loop of its own (the in-memory layer
    of `make run`, whose sockets live in this process's event loop)."""
    supported = getattr(layer, "blocking_supported", None)
    return supported is not None and bool(supported())
