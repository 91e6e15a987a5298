"""The room's signaling socket, `/ws/rooms/<room id>/` (docs/SIGNALING.md).

Thin by design: every frame goes through `rooms.protocol.message_read`, then to one small
handler that makes one service call, or relays (SDP and ICE touch no database). Everything that
must survive a process is in the database; what the consumer keeps in memory (who is in the
room, its rate limit) is rebuilt from `welcome` and the broadcasts on every connect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from autobahn.exception import Disconnected
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone
from redis.exceptions import RedisError

from config.postgresql.errors import DATABASE_ERRORS
from rooms import broadcast, selectors, services
from rooms.errors import NotAllowed, RoomsError
from rooms.models import Room, RoomState
from rooms.protocol import VERSION, Message, ProtocolError, RateLimit, message_read
from rooms.socket_database import database_call, heartbeats

logger = logging.getLogger(__name__)

PROCESS = f"{socket.gethostname()}:{os.getpid()}"
# This process's sockets opened with `?join=later` and not yet joined, by user: no seat is
# checked before the join, so the count is what bounds what one account can hold.
waiting_by_user: Counter[int] = Counter()

# What the channel layer raises when Redis is down or unreachable (redis-py's errors, and the
# OS's for a refused or reset connection). The socket answers `unavailable` instead of dying.
LAYER_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError)
UNAVAILABLE = (
    "Signaling is unavailable for a moment. Your call goes on; the page reconnects by itself."
)

# Close codes (docs/SIGNALING.md): a refusal at connect says its reason in the code too,
# because Daphne sends no close-frame reason text.
REFUSAL_CLOSE_CODES = {
    "login_required": 4401,
    "not_paid": 4402,
    "not_participant": 4403,
    "room_not_found": 4404,
    "forbidden_origin": 4406,
    "join_timeout": 4408,
    "room_full": 4409,
    "room_ended": 4410,
    "blocked": 4423,
    "removed": 4424,
    "too_early": 4425,
    "too_many_joins": 4429,
    "too_many_waiting": 4429,
    "unavailable": 4503,
}
CLOSE_ENDED = 4000
CLOSE_REPLACED = 4001
CLOSE_REMOVED = 4002
CLOSE_GONE = 4008
WARNING_MINUTES = (5, 1)


class RoomConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    room_id: int
    admitted: bool = False
    # Opened with `?join=later` and waiting for the page's `join`: authenticated, and nothing
    # more. No presence, no group: nobody in the room can tell it exists.
    awaiting_join: bool = False
    # In the room's and the participant's groups (from the join on).
    grouped: bool = False
    # The handshake was read (connect ran): from then on a refusal is a message and a code.
    handshake_read: bool = False
    # `ended` was sent (by the room's broadcast or this socket's own paid-end timer).
    ended_told: bool = False
    # Participants in the room as this socket knows them: signals may be addressed to them.
    peers: set[int]
    # The paid end, from `welcome`: no heartbeat is acknowledged past it.
    ends_at: datetime

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await self.serve(scope, receive, send)
        except LAYER_ERRORS:
            if self.handshake_read:
                raise
            # The channel layer failed before the handshake was read (its own channel could
            # not be subscribed): answer the handshake here rather than with an HTTP 500.
            logger.warning("Channel layer unavailable at connect", exc_info=True)
            await self.unavailable_handshake(receive, send)

    async def serve(self, scope: Any, receive: Any, send: Any) -> None:
        """Channels' `AsyncConsumer.__call__`, with `messages_dispatch` for its loop."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        sources = [receive]
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
            sources.append(self.channel_receive)
        self.base_send = send
        try:
            await messages_dispatch(sources, self.dispatch)
        except StopConsumer:
            pass
        finally:
            # The loop may end without `disconnect` (Daphne cancels an application slow to
            # end after its client went, and all of them at shutdown; a source may fail): a
            # timer left on the event loop would keep the consumer until the paid end, then
            # serve a socket that is gone.
            self.timers_cancel()
            self.waiting_end()

    @staticmethod
    async def unavailable_handshake(receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        error = {"v": VERSION, "type": "error", "code": "unavailable", "message": UNAVAILABLE}
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps({**error, "ref": None})})
        await send({"type": "websocket.close", "code": REFUSAL_CLOSE_CODES["unavailable"]})

    async def connect(self) -> None:
        self.handshake_read = True
        self.peers = set()
        # Timers are loop callbacks until they fire (a sleeping task per timer would cost a
        # socket a few KiB more: bench/signaling.py's idle sockets), then the task they start.
        self.timers: list[asyncio.TimerHandle | asyncio.Task[None]] = []
        self.limit = RateLimit(settings.SIGNALING_MAX_MESSAGES_PER_SECOND)
        self.stats_sent: dict[int, float] = {}
        self.room_id = int(self.scope["url_route"]["kwargs"]["room_id"])
        self.user = self.scope.get("user")
        await self.accept()
        if self.user is None or not self.user.is_authenticated:
            await self.refuse("login_required", "Log in to join this session.")
            return
        if self.joins_later():
            # The page opened this socket during its preflight so that Join costs one message,
            # not a handshake and a session lookup; the person is in the room from the `join`.
            most = settings.SIGNALING_WAITING_PER_USER
            if waiting_by_user[self.user.pk] >= most:
                await self.refuse(
                    "too_many_waiting",
                    f"At most {most} room pages of one account may wait for Join at once; "
                    "close one, or click Join on this one.",
                )
                return
            waiting_by_user[self.user.pk] += 1
            self.awaiting_join = True
            wait = settings.SIGNALING_JOIN_WAIT_SECONDS
            self.timer_set(wait, functools.partial(self.join_wait_end, wait))
            await self.tell({"type": "ready", "join_within_seconds": wait})
            return
        await self.admit()

    def joins_later(self) -> bool:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        return query.get("join") == ["later"]

    async def join_wait_end(self, seconds: float) -> None:
        """A socket that never joins is closed: it held a connection and nothing else."""
        if self.awaiting_join:
            self.waiting_end()
            await self.refuse(
                "join_timeout",
                f"No join within {seconds:g} s of connecting; connect again when you join.",
            )

    async def admit(self) -> None:
        """Admission (docs/SIGNALING.md): the groups, then the presence, then `welcome`; or a
        refusal with its code. At connect, or at the `join` of a socket opened before it."""
        # In the groups before the presence exists, so nothing addressed to this participant
        # after its join commits can miss it.
        self.grouped = True
        try:
            await self.channel_layer.group_add(
                broadcast.room_group(self.room_id), self.channel_name
            )
            await self.channel_layer.group_add(self.own_group, self.channel_name)
        except LAYER_ERRORS:
            # Without its groups the socket would miss the room's news: refuse it cleanly; the
            # page dials again with backoff and resumes within the grace.
            logger.warning("Channel layer unavailable joining room %s", self.room_id)
            await self.refuse("unavailable", UNAVAILABLE)
            return
        try:
            welcome, news = await database_call(self.join)(asyncio.get_running_loop())
        except Room.DoesNotExist:
            await self.refuse("room_not_found", "There is no such session.")
            return
        except services.JoinRefused as refused:
            await self.refuse(refused.code, str(refused))
            return
        except Exception:
            # The database (or a bug) failed the join: a clean refusal the page retries, not
            # a 1011. Nothing was written (the join is one transaction).
            logger.exception("Joining room %s failed", self.room_id)
            await self.refuse("unavailable", UNAVAILABLE)
            return
        self.admitted = True
        self.peers = {peer["id"] for peer in welcome["peers"]}
        try:
            await self.tell(welcome)
        finally:
            await asyncio.wrap_future(news)
        self.ends_at = ends_at = datetime.fromisoformat(welcome["room"]["ends_at"])
        self.warnings_schedule(ends_at)
        # The socket is not served past the paid end, whether or not a worker closes the room.
        self.timer_set((ends_at - timezone.now()).total_seconds() + 0.1, self.paid_end)

    @property
    def own_group(self) -> str:
        return broadcast.participant_group(self.room_id, self.user.pk)

    def join(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[dict[str, Any], concurrent.futures.Future[None]]:
        """The presence, then this socket's `welcome`. The news of the join for the others
        (peer_joined, the room going live, the replaced connection's notice) goes out from the
        event loop as soon as the join has committed, while this thread reads the welcome,
        instead of the welcome's read waiting behind each send; `admit` awaits it after the
        welcome. This socket's own copy of that news, and the peers' first offers, queue
        behind the welcome (a consumer handles one message at a time)."""
        with broadcast.held() as news:
            joined = services.presence_open(
                self.room_id, self.user, connection_id=self.channel_name, process=PROCESS
            )
        sent = asyncio.run_coroutine_threadsafe(broadcast.held_send(news), loop)
        return selectors.room_welcome(
            self.room_id, self.user, resumed=joined.resumed, now=timezone.now()
        ), sent

    async def refuse(self, code: str, message: str) -> None:
        await self.error(code, message)
        await self.leave_groups()
        await self.close(code=REFUSAL_CLOSE_CODES[code])

    async def disconnect(self, code: int) -> None:
        self.timers_cancel()
        await self.leave_groups()
        if self.admitted:
            self.admitted = False
            await self.presence_close("dropped")
        # Closed by the server (replaced, removed, ended): nothing left to tell either.
        heartbeats.forget(self.channel_name)

    async def presence_close(self, reason: str) -> None:
        # A beat still in the batch is written with the close: the row's last heartbeat is
        # this socket's real last one.
        last_beat = heartbeats.pending_beat(self.channel_name)
        heartbeats.forget(self.channel_name)
        await database_call(services.presence_close)(
            self.channel_name, reason=reason, last_heartbeat_at=last_beat
        )

    async def leave_groups(self) -> None:
        if not self.grouped:
            return
        self.grouped = False
        try:
            await self.channel_layer.group_discard(
                broadcast.room_group(self.room_id), self.channel_name
            )
            await self.channel_layer.group_discard(self.own_group, self.channel_name)
        except LAYER_ERRORS:
            # Redis is down: its subscriptions go with the connection anyway.
            logger.warning("Channel layer unavailable leaving room %s", self.room_id)

    # --- from the participant ----------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not (self.admitted or self.awaiting_join):
            return
        if not self.limit.allow():
            limit = settings.SIGNALING_MAX_MESSAGES_PER_SECOND
            await self.error("rate_limited", f"At most {limit} messages a second; dropped.")
            return
        ref = None
        try:
            message = message_read(
                text_data, bytes_data, max_bytes=settings.SIGNALING_MAX_MESSAGE_BYTES
            )
            ref = message.type
            if self.awaiting_join and message.type != "join":
                raise ProtocolError(
                    "not_joined",
                    "This socket is not in the call yet: send join first.",
                    message.type,
                )
            await HANDLERS[message.type](self, message)
        except ProtocolError as error:
            await self.error(error.code, error.message, error.ref)
        except LAYER_ERRORS:
            # Redis is down: this message could not be relayed. The socket stays (heartbeats
            # need only the database) and the peers' media keeps flowing peer to peer.
            logger.warning("Channel layer unavailable in room %s", self.room_id, exc_info=True)
            await self.error("unavailable", UNAVAILABLE, ref)
        except DATABASE_ERRORS as down:
            # PostgreSQL is down or restarting: answered with the message's type as `ref`, so
            # the page sends what must arrive (media reports) again.
            logger.warning("Database unavailable for %s in room %s: %s", ref, self.room_id, down)
            await self.error("unavailable", UNAVAILABLE, ref)
        except Exception:
            # A bug: answered, logged, and the socket stays up rather than dying with 1011.
            logger.exception("A message in room %s failed", self.room_id)
            await self.error("server_error", "Something went wrong on our side; try again.", ref)

    async def on_join(self, message: Message) -> None:
        if not self.awaiting_join:
            raise ProtocolError(
                "already_joined",
                "This socket is already in the call (it joined, or was admitted when it "
                "connected); join is sent once, on a socket opened with ?join=later.",
                "join",
            )
        # Before any await: the wait's timer must not close a socket whose join is under way
        # (when it fires it finds nothing waiting).
        self.waiting_end()
        await self.admit()

    def waiting_end(self) -> None:
        if self.awaiting_join:
            self.awaiting_join = False
            waiting_by_user[self.user.pk] -= 1
            if not waiting_by_user[self.user.pk]:
                del waiting_by_user[self.user.pk]

    async def on_heartbeat(self, message: Message) -> None:
        now = timezone.now()
        if now >= self.ends_at:
            # Past the paid end: not acknowledged; the socket is ended (docs/SIGNALING.md).
            await self.presence_gone()
            return
        # Stored within a second with the process's other beats (rooms/socket_database.py),
        # at the time it arrived. Acknowledged now: the acknowledgement says the server holds
        # this socket; if the batch finds the presence gone, presence_gone closes it.
        heartbeats.beat(self.channel_name, now, self.presence_gone)
        await self.tell({"type": "heartbeat_ack", "server_time": now.isoformat()})

    async def presence_gone(self) -> None:
        """This connection's presence is over (swept while silent, closed with the room,
        replaced, or past the paid end). If the room ended (or is due to), say so as a close
        would; otherwise close 4008."""
        if not self.admitted:
            return
        if not await self.end_if_over():
            self.admitted = False
            await self.close(code=CLOSE_GONE)

    async def on_signal(self, message: Message) -> None:
        to = message.fields["to"]
        self.peer_check(to, "signal")
        try:
            await self.channel_layer.group_send(
                broadcast.participant_group(self.room_id, to),
                {"type": "peer.signal", "from": self.user.pk, "data": message.fields["data"]},
            )
        except LAYER_ERRORS:
            logger.warning("Channel layer unavailable relaying in room %s", self.room_id)
            raise ProtocolError("unavailable", UNAVAILABLE, "signal") from None

    async def on_media_state(self, message: Message) -> None:
        fields = message.fields
        self.peer_check(fields["peer"], "media_state")
        await self.service(
            "media_state",
            services.media_state_report,
            self.room_id,
            self.user,
            peer_id=fields["peer"],
            state=fields["state"],
            candidate_type=fields["candidate_type"],
            since=fields.get("since"),
        )

    async def on_stats(self, message: Message) -> None:
        fields = dict(message.fields)
        peer = fields.pop("peer")
        self.peer_check(peer, "stats")
        now = asyncio.get_running_loop().time()
        if now - self.stats_sent.get(peer, -1e9) < settings.STATS_MIN_INTERVAL_SECONDS:
            every = settings.STATS_MIN_INTERVAL_SECONDS
            raise ProtocolError(
                "rate_limited", f"One stats summary per peer every {every} s.", "stats"
            )
        self.stats_sent[peer] = now
        await self.service(
            "stats", services.call_stats_record, self.room_id, self.user, peer_id=peer, **fields
        )

    async def on_end(self, message: Message) -> None:
        # Every socket, this one included, hears `ended` after the close commits.
        await self.service("end", services.room_end_by_expert, self.room_id, self.user)

    async def on_leave(self, message: Message) -> None:
        self.admitted = False
        await self.presence_close("left")
        await self.close(code=1000)

    def peer_check(self, peer: int, ref: str) -> None:
        if peer not in self.peers:
            raise ProtocolError("peer_not_here", f"Participant {peer} is not in this room.", ref)

    async def service(self, ref: str, function: Any, *args: Any, **kwargs: Any) -> None:
        try:
            await database_call(function)(*args, **kwargs)
        except NotAllowed as refused:
            raise ProtocolError("not_allowed", str(refused), ref) from None
        except RoomsError as refused:
            raise ProtocolError("refused", str(refused), ref) from None

    # --- from the channel layer --------------------------------------------------------------

    async def room_event(self, event: dict[str, Any]) -> None:
        message = event["event"]
        about = event.get("about")
        if about == self.user.pk:
            return
        if message["type"] == "peer_joined":
            self.peers.add(message["peer"]["id"])
        elif message["type"] in ("peer_resumed", "peer_reconnecting"):
            self.peers.add(message["peer_id"])
        elif message["type"] == "peer_left":
            self.peers.discard(message["peer_id"])
        await self.tell(message)

    async def room_ended(self, event: dict[str, Any]) -> None:
        if self.ended_told:
            return
        self.ended_told = True
        self.admitted = False
        charge = event["charges"].get(str(self.user.pk))
        await self.tell({"type": "ended", "reason": event["reason"], "charge": charge})
        await self.close(code=CLOSE_ENDED)

    async def paid_end(self) -> None:
        """At the paid end, close the room (`time_limit`, as the sweep would) and this socket,
        even when no worker runs; the room's broadcast may tell the other sockets first."""
        if self.admitted:
            await self.end_if_over()

    async def end_if_over(self) -> bool:
        """Bring the room up to the clock; if it is closed, tell this socket `ended` (with its
        charge, from the database) and close it. Returns whether it did."""
        if self.ended_told:
            return True
        try:
            ended = await database_call(self.ended_message)()
        except Exception:
            logger.exception("Catching room %s up with the clock failed", self.room_id)
            ended = None
        if ended is None or self.ended_told:
            return self.ended_told
        self.ended_told = True
        self.admitted = False
        await self.tell(ended)
        await self.close(code=CLOSE_ENDED)
        return True

    def ended_message(self) -> dict[str, Any] | None:
        room = services.room_catch_up(self.room_id)
        if room.state != RoomState.CLOSED:
            return None
        return selectors.room_ended_message(room, self.user)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, without its `close_old_connections` before every frame, relayed
        signal and room event: that is a hop to Channels' one thread-sensitive thread (where
        sessions are read), so each signal waited behind other sockets' work there. Nothing on
        these paths touches the database except through `database_call`
        (`database_sync_to_async`), which closes stale connections itself, before and after."""
        if message["type"] in HOPLESS:
            await getattr(self, get_handler_name(message))(message)
        else:
            await super().dispatch(message)

    async def peer_signal(self, event: dict[str, Any]) -> None:
        if event["from"] not in self.peers:
            # Reached this socket before the broadcast of that peer's join: it is in the room
            # (the server admitted it to send), so learn it now.
            self.peers.add(event["from"])
        await self.tell({"type": "signal", "from": event["from"], "data": event["data"]})

    async def presence_replaced(self, event: dict[str, Any]) -> None:
        if event["connection_id"] != self.channel_name:
            return
        self.admitted = False
        await self.tell({"type": "replaced"})
        await self.close(code=CLOSE_REPLACED)

    async def presence_removed(self, event: dict[str, Any]) -> None:
        self.admitted = False
        await self.tell(
            {"type": "removed", "reason": event["reason"], "message": event.get("notice", "")}
        )
        await self.close(code=CLOSE_REMOVED)

    # --- to the participant ------------------------------------------------------------------

    async def tell(self, message: dict[str, Any]) -> None:
        try:
            await self.send(text_data=json.dumps({"v": VERSION, **message}))
        except Disconnected:
            # The closing handshake began (the participant's close, or ours): Daphne refuses
            # to send on it. Frames read before it are still handled; their answers have
            # nowhere to go, and the disconnect that follows ends the socket as usual.
            logger.debug("Socket in room %s closing; %s not sent", self.room_id, message["type"])

    async def error(self, code: str, message: str, ref: str | None = None) -> None:
        await self.tell({"type": "error", "code": code, "message": message, "ref": ref})

    def warnings_schedule(self, ends_at: datetime) -> None:
        now = timezone.now()
        for minutes in WARNING_MINUTES:
            delay = (ends_at - timedelta(minutes=minutes) - now).total_seconds()
            if delay > 0:
                self.timer_set(delay, functools.partial(self.warn, minutes, ends_at))

    async def warn(self, minutes: int, ends_at: datetime) -> None:
        if self.admitted:
            await self.tell(
                {"type": "warning", "minutes_left": minutes, "ends_at": ends_at.isoformat()}
            )

    def timers_cancel(self) -> None:
        for timer in getattr(self, "timers", []):
            timer.cancel()

    def timer_set(self, delay: float, action: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `action` in `delay` seconds (now if that is past), unless the socket goes first."""

        def fire() -> None:
            self.timers.append(asyncio.create_task(action()))

        self.timers.append(asyncio.get_running_loop().call_later(max(0.0, delay), fire))


class Inbox:
    """Where `messages_dispatch`'s readers leave messages for its loop: a list and the loop's
    one waiter. An asyncio.Queue would do the same with three deques and an Event, some 3 KiB
    a socket, which is what counts with thousands of idle sockets in a process
    (bench/signaling.py, KiB/socket)."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: list[dict[str, Any] | Exception] = []
        self.waiter: asyncio.Future[None] | None = None

    def put(self, item: dict[str, Any] | Exception) -> None:
        self.items.append(item)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def get(self) -> dict[str, Any] | Exception:
        while not self.items:
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        # Rarely more than one or two waiting: a list's pop from the front is cheap here.
        return self.items.pop(0)


async def messages_dispatch(
    sources: Sequence[Callable[[], Awaitable[dict[str, Any]]]],
    dispatch: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Hands every message of `sources` (the socket's frames, the channel layer's messages) to
    `dispatch`, one at a time, in the order they arrived, until `dispatch` or a source raises.

    What Channels' `await_many_dispatch` does, without its cost per message: that starts a new
    task for every message and waits on all sources with `asyncio.wait` each time, which was a
    measurable share of a relayed signal's CPU (bench/signaling.py). Here each source is read
    by one task for the socket's life, into one inbox the loop takes from."""
    inbox = Inbox()

    async def read(source: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        try:
            while True:
                inbox.put(await source())
        except Exception as error:
            # Raised where the loop is, as Channels' loop would: the consumer's __call__ sees it.
            inbox.put(error)

    readers = [asyncio.create_task(read(source)) for source in sources]
    try:
        while True:
            message = await inbox.get()
            if isinstance(message, Exception):
                raise message
            await dispatch(message)
    finally:
        for reader in readers:
            reader.cancel()
        # Cancelling the channel layer's receive unsubscribes its channel. That finishes even
        # if this task is cancelled while it waits (Daphne kills an application slow to close,
        # and every one at shutdown): cancelled a second time, the unsubscribe would stop
        # half-way and leave the channel subscribed on the process's Redis connection.
        await asyncio.gather(
            *(asyncio.shield(reader) for reader in readers), return_exceptions=True
        )


# What `dispatch` hands straight to its handler: the participant's frames, relayed signals and
# the room's news (a signal queued behind a `peer_joined` waits for whatever delays that).
HOPLESS = frozenset({"websocket.receive", "peer.signal", "room.event"})

HANDLERS = {
    "join": RoomConsumer.on_join,
    "heartbeat": RoomConsumer.on_heartbeat,
    "signal": RoomConsumer.on_signal,
    "media_state": RoomConsumer.on_media_state,
    "stats": RoomConsumer.on_stats,
    "end": RoomConsumer.on_end,
    "leave": RoomConsumer.on_leave,
}
