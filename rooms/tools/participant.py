"""A scripted participant of a call: it logs in like a person, joins a room over the signaling
socket (docs/SIGNALING.md) and sends and receives synthetic audio and video with aiortc.

Tests, benchmarks and the canary join calls with it, so it behaves like the browser client:
heartbeats, perfect negotiation with every peer, media reports when a connection goes up or
down, stats, and resuming its socket on another server (from `servers`) when the one it was on
goes away, while its peer connections stay up.

Media reports go as the page sends them (static/js/room/signaling.js): each carries the time of
its change (`since`), and it is kept until a heartbeat sent after it on the same socket is
acknowledged; it goes again on the next socket, or a second later when the server answers it
`unavailable` or `server_error` (its database restarting). A close the server asks to wait
after (4429 too many joins, 4503 unavailable) is waited out, as the page does.

Perfect negotiation, as aiortc allows it. The peer with the higher participant id is polite.
aiortc can neither roll back a local offer nor restart ICE in place, so where a browser would
do either, this participant replaces the peer connection with a fresh one: the polite side on
an offer collision; either side on an offer that starts a new session (new DTLS fingerprint or
ICE credentials) or that arrives when the connection has failed; and on `peer_resumed` when
media is not flowing. The impolite side makes the first offer. aiortc gathers all candidates
before an offer or answer is set, so descriptions carry them and no `candidate` message is
sent; candidates from a trickling peer (a browser) are added as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import http.cookiejar
import json
import logging
import math
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import av
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.typing import Origin

logger = logging.getLogger(__name__)

VERSION = 1
# Closes after which coming back makes no sense: left, ended, replaced, removed, refused (but
# not 4429, "too many joins": the page comes back after the wait it is told).
FINAL_CLOSE_CODES = ({1000, 4000, 4001, 4002} | set(range(4400, 4500))) - {4429}
# Seconds to wait before coming back after these closes (the page's RETRY_AFTER_MS).
RETRY_AFTER_SECONDS = {4429: 10.0, 4503: 2.0}
# A media report the server could not take goes again this much later (OUTBOX_RETRY_MS).
OUTBOX_RETRY_SECONDS = 1.0
# Errors that mean "not taken, send it again".
RETRIED_ERRORS = {"unavailable", "server_error"}
# Video frames further apart than this are a freeze: the received intervals split there.
FRAME_GAP_SECONDS = 1.0
STATS_SECONDS = 10.0


class LoginFailed(Exception):
    pass


class JoinRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


# --- synthetic media ------------------------------------------------------------------------


TONE_RATE = 48_000
TONE_SAMPLES = 960
# 400 Hz: exactly 8 periods in each 20 ms frame, so one precomputed frame repeats seamlessly.
TONE_PCM = b"".join(
    int(8000 * math.sin(2 * math.pi * 400 * i / TONE_RATE)).to_bytes(2, "little", signed=True)
    for i in range(TONE_SAMPLES)
)


class ToneTrack(AudioStreamTrack):
    """A 400 Hz tone in 20 ms frames at 48 kHz."""

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += TONE_SAMPLES
            await asyncio.sleep(self._start + self._timestamp / TONE_RATE - time.time())
        else:
            self._start, self._timestamp = time.time(), 0
        frame = av.AudioFrame(format="s16", layout="mono", samples=TONE_SAMPLES)
        frame.planes[0].update(TONE_PCM)
        frame.pts = self._timestamp
        frame.sample_rate = TONE_RATE
        frame.time_base = fractions.Fraction(1, TONE_RATE)
        return frame


VIDEO_CLOCK = 90_000


@dataclass(frozen=True)
class Video:
    """What a participant's camera sends: size and frame rate."""

    width: int = 320
    height: int = 240
    fps: int = 30


class PatternTrack(VideoStreamTrack):
    """Frames of `video`'s size and rate whose brightness cycles, so every frame differs from
    the last."""

    def __init__(self, video: Video = Video()) -> None:
        super().__init__()
        self.video = video
        self.index = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if hasattr(self, "_timestamp"):
            self._timestamp += VIDEO_CLOCK // self.video.fps
            await asyncio.sleep(self._start + self._timestamp / VIDEO_CLOCK - time.time())
        else:
            self._start, self._timestamp = time.time(), 0
        pts, time_base = self._timestamp, fractions.Fraction(1, VIDEO_CLOCK)
        frame = av.VideoFrame(self.video.width, self.video.height, "yuv420p")
        luma = 16 + (self.index * 4) % 220
        for plane, value in zip(frame.planes, (luma, 128, 128), strict=True):
            plane.update(bytes([value]) * plane.buffer_size)
        self.index += 1
        frame.pts, frame.time_base = pts, time_base
        return frame


@dataclass
class FrameLog:
    """When video frames from one peer arrived (wall clock), as intervals without a freeze."""

    count: int = 0
    intervals: list[list[float]] = field(default_factory=list)

    def add(self, at: float) -> None:
        self.count += 1
        if self.intervals and at - self.intervals[-1][1] <= FRAME_GAP_SECONDS:
            self.intervals[-1][1] = at
        else:
            self.intervals.append([at, at])

    def until(self, end: float) -> list[list[float]]:
        """The intervals cut at `end` (e.g. when the call ended)."""
        return [[a, min(b, end)] for a, b in self.intervals if a < end]


def overlap_seconds(a: list[list[float]], b: list[list[float]]) -> float:
    """Total length of the intersection of two sorted lists of disjoint intervals."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        total += max(0.0, min(a[i][1], b[j][1]) - max(a[i][0], b[j][0]))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return total


# --- one peer -------------------------------------------------------------------------------


class PeerLink:
    """The WebRTC connection with one peer, its negotiation and what was received from it.

    Signals and negotiation steps run one at a time, in order, on the link's own worker.
    """

    def __init__(self, owner: Participant, peer_id: int) -> None:
        self.owner = owner
        self.peer_id = peer_id
        self.polite = owner.you_id > peer_id
        self.frames = FrameLog()
        self.audio_frames = 0
        self.media_at = 0.0  # when the last frame (audio or video) arrived
        self.candidate_type = ""
        self.connections = 0  # peer connections used so far (1 + replacements)
        self.reported = False  # whether the server last heard "connected" from us
        self.ignore_offer = False
        self.jobs: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        self.pc = self._pc_new()
        self.worker = asyncio.create_task(self._work())

    def schedule(self, job: Callable[[], Awaitable[None]]) -> None:
        self.jobs.put_nowait(job)

    async def _work(self) -> None:
        while True:
            job = await self.jobs.get()
            try:
                await job()
            except Exception:
                # One bad description must not end the link; the next offer can still work.
                logger.exception("%s: negotiation with %s failed", self.owner.name, self.peer_id)

    def _pc_new(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.owner.ice_servers()))
        pc.addTrack(ToneTrack())
        pc.addTrack(PatternTrack(self.owner.video))
        pc.on("track", lambda track: self._spawn(self._receive(track)))
        pc.on("connectionstatechange", lambda: self._connection_changed(pc))
        self.connections += 1
        return pc

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _receive(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                await track.recv()
            except MediaStreamError:
                return
            self.media_at = time.time()
            if track.kind == "video":
                self.frames.add(self.media_at)
                self.owner.received.setdefault(self.peer_id, FrameLog()).add(self.media_at)
            else:
                self.audio_frames += 1

    def _connection_changed(self, pc: RTCPeerConnection) -> None:
        state = pc.connectionState
        logger.info("%s: connection with %s is %s", self.owner.name, self.peer_id, state)
        if pc is not self.pc:
            return  # a replaced connection (its close was reported when it was replaced)
        if state == "connected":
            self.candidate_type = selected_candidate_type(pc)
            self.owner.media_report(self, connected=True)
            self._spawn(self._stats_loop(pc))
        elif state in ("failed", "closed"):
            self.owner.media_report(self, connected=False)
            if state == "failed":
                self.schedule(self.restart)

    # --- negotiation ------------------------------------------------------------------------
    async def offer(self) -> None:
        if self.pc.signalingState != "stable":
            return
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self._send_description()

    async def restart(self) -> None:
        """A fresh connection and a new offer: aiortc's stand-in for an ICE restart."""
        await self._replace()
        await self.offer()

    async def on_signal(self, data: dict[str, Any]) -> None:
        if "description" in data:
            await self._on_description(data["description"])
        elif "candidate" in data:
            await self._on_candidate(data["candidate"])

    async def _on_description(self, description: dict[str, Any]) -> None:
        kind, sdp = description["type"], description.get("sdp", "")
        if kind not in ("offer", "answer"):
            return  # pranswer and rollback never come from a peer that follows the protocol
        if kind == "offer" and (
            self.pc.connectionState in ("failed", "closed") or self.pc.signalingState == "closed"
        ):
            # Over or closing (the peer closed it to start afresh, or it failed): the offer is
            # for a new connection.
            await self._replace()
        collision = kind == "offer" and self.pc.signalingState != "stable"
        self.ignore_offer = collision and not self.polite
        if self.ignore_offer:
            return  # the impolite side keeps its own offer; the peer will answer it
        if kind == "offer" and (collision or self._new_session(sdp)):
            await self._replace()
        if kind == "answer" and self.pc.signalingState != "have-local-offer":
            return  # an answer to an offer this side has since dropped
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        if kind == "offer":
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self._send_description()

    async def _on_candidate(self, candidate: dict[str, Any] | None) -> None:
        try:
            if candidate is None or not candidate["candidate"]:
                await self.pc.addIceCandidate(None)
                return
            parsed = candidate_from_sdp(candidate["candidate"].removeprefix("candidate:"))
            parsed.sdpMid = candidate.get("sdpMid")
            parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
            await self.pc.addIceCandidate(parsed)
        except Exception:
            if not self.ignore_offer:  # candidates of an ignored offer are expected to fail
                raise

    def _new_session(self, sdp: str) -> bool:
        """Whether an offer comes from a new connection on the peer's side (or restarts ICE),
        which an existing aiortc connection cannot take."""
        current = self.pc.remoteDescription
        if current is None:
            return False
        return session_keys(sdp) != session_keys(current.sdp)

    async def _replace(self) -> None:
        old, self.pc = self.pc, self._pc_new()
        self.owner.media_report(self, connected=False)
        await old.close()

    async def _send_description(self) -> None:
        local = self.pc.localDescription
        description = {"type": local.type, "sdp": local.sdp}
        await self.owner.send(
            {"type": "signal", "to": self.peer_id, "data": {"description": description}}
        )

    # --- stats ------------------------------------------------------------------------------
    async def _stats_loop(self, pc: RTCPeerConnection) -> None:
        before: tuple[float, int, int] | None = None
        while pc is self.pc and pc.connectionState == "connected":
            report = await pc.getStats()
            now, rtts, losses, sent, received = time.monotonic(), [], [], 0, 0
            for stats in report.values():
                if stats.type == "remote-inbound-rtp":
                    rtts.append(stats.roundTripTime)
                    losses.append(stats.fractionLost)
                elif stats.type == "transport":
                    sent, received = sent + stats.bytesSent, received + stats.bytesReceived
            if before is not None and rtts:
                seconds = max(now - before[0], 0.001)
                await self.owner.send(
                    {
                        "type": "stats",
                        "peer": self.peer_id,
                        "rtt_ms": round(1000 * max(rtts), 1),
                        "packet_loss": min(1.0, max(0.0, max(losses))),
                        "bitrate_in_kbps": round(8 * (received - before[2]) / seconds / 1000, 1),
                        "bitrate_out_kbps": round(8 * (sent - before[1]) / seconds / 1000, 1),
                        **({"candidate_type": self.candidate_type} if self.candidate_type else {}),
                    }
                )
            before = (now, sent, received)
            await asyncio.sleep(STATS_SECONDS)

    async def close(self) -> None:
        self.worker.cancel()
        for task in list(self.tasks):
            task.cancel()
        await self.pc.close()


def session_keys(sdp: str) -> set[str]:
    """The lines that identify a connection's session: DTLS fingerprints and ICE credentials."""
    return {
        line.strip()
        for line in sdp.splitlines()
        if line.startswith(("a=fingerprint:", "a=ice-ufrag:", "a=ice-pwd:"))
    }


def selected_candidate_type(pc: RTCPeerConnection) -> str:
    """The local candidate type (host, srflx, prflx, relay) of the nominated pair, or "" when
    aiortc does not say (it has no candidate-pair stats; this reads aioice's connection)."""
    try:
        for transceiver in pc.getTransceivers():
            connection = transceiver.receiver.transport.transport._connection
            for pair in connection._nominated.values():
                return str(pair.local_candidate.type)
    except AttributeError:
        pass
    return ""


# --- the participant ------------------------------------------------------------------------


@dataclass(eq=False)
class Outgoing:
    """A message that must arrive (a media report) and the socket it last went out on."""

    message: dict[str, Any]
    # The welcome (Participant.admissions) of the socket it went out on; None: not yet, or
    # again (the server could not take it).
    sent_in: int | None = None


class Participant:
    """One person in one room. `join()`, then watch `links`, `messages`, `ended`; `close()`.

    `servers` are base URLs of the same deployment (`http://127.0.0.1:8001`); the first is used
    to log in and join, and a dropped socket comes back on the next one that answers. Set
    `cookies` (a logged-in session's) before `join()` to skip the login form.
    """

    def __init__(
        self,
        servers: list[str],
        email: str,
        password: str,
        room_id: int,
        *,
        name: str = "participant",
        resume_within: float = 20.0,
        video: Video = Video(),
    ) -> None:
        self.servers = [url.rstrip("/") for url in servers]
        self.server = self.servers[0]
        self.email, self.password, self.room_id, self.name = email, password, room_id, name
        self.resume_within = resume_within
        self.video = video
        self.cookies: dict[str, str] = {}
        self.you: dict[str, Any] = {}
        self.welcome: dict[str, Any] = {}
        self.peers: dict[int, dict[str, Any]] = {}
        self.links: dict[int, PeerLink] = {}
        # Video received from each peer over the whole call, across its connections.
        self.received: dict[int, FrameLog] = {}
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.errors: list[dict[str, Any]] = []
        self.ended: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None  # ended, replaced or removed
        # Each socket's end: (wall-clock time, close code).
        self.closes: list[tuple[float, int | None]] = []
        # Media reports not yet confirmed, oldest first; those a heartbeat awaiting its ack
        # confirms; and how many welcomes this participant has had (one per socket).
        self.outbox: list[Outgoing] = []
        self._confirming: list[Outgoing] = []
        self._awaiting_ack = False
        self.admissions = 0
        self.done = asyncio.Event()
        self._changed = asyncio.Condition()
        self._socket: ClientConnection | None = None
        # The socket's reader and heartbeat (and a resume under way): cancelled with it.
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[None]] = set()
        self._closing = False
        # Until when (wall clock) the network is away: no socket can be opened (`drop`).
        self._away_until = 0.0

    @property
    def you_id(self) -> int:
        return int(self.you["id"])

    @property
    def close_codes(self) -> list[int | None]:
        return [code for _, code in self.closes]

    def ice_servers(self) -> list[RTCIceServer]:
        # Always explicit: without a configuration aiortc falls back to a public STUN server.
        return [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in self.welcome.get("ice_servers", [])
        ]

    # --- connecting -------------------------------------------------------------------------
    async def login(self) -> None:
        self.cookies = await asyncio.to_thread(login, self.server, self.email, self.password)

    async def join(self, timeout: float = 10.0) -> dict[str, Any]:
        """Log in (once), open the socket and wait for `welcome`; JoinRefused if the room
        says no."""
        if not self.cookies:
            await self.login()
        mark = len(self.messages)
        await self._connect(self.server)
        return await self._welcomed(mark, timeout)

    async def reconnect(self, server: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Close the socket without leaving and open a new one (on `server`); the peer
        connections stay as they are."""
        await self._disconnect()
        mark = len(self.messages)
        await self._connect((server or self.server).rstrip("/"))
        return await self._welcomed(mark, timeout)

    async def _welcomed(self, since: int, timeout: float) -> dict[str, Any]:
        # The first message on a new socket is `welcome`, or the `error` of a refusal.
        first = await self.wait_for(("welcome", "error"), timeout=timeout, since=since)
        if first["type"] == "error":
            raise JoinRefused(first["code"], first["message"])
        return first

    async def _connect(self, server: str) -> None:
        url = urllib.parse.urlsplit(server)
        scheme = "wss" if url.scheme == "https" else "ws"
        socket = await connect(
            f"{scheme}://{url.netloc}/ws/rooms/{self.room_id}/",
            origin=Origin(server),
            additional_headers={"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())},
            open_timeout=5,
        )
        self.server, self._socket = server, socket
        self._tasks.append(asyncio.create_task(self._read(socket)))

    async def _disconnect(self) -> None:
        socket, self._socket = self._socket, None
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        if socket is not None:
            await socket.close()

    async def _read(self, socket: ClientConnection) -> None:
        try:
            async for text in socket:
                self.handle(json.loads(text))
        except ConnectionClosed:
            pass
        self.closes.append((time.time(), socket.close_code))
        if socket is not self._socket or self._closing:
            return
        self._socket = None
        if self.final is not None or socket.close_code in FINAL_CLOSE_CODES:
            self.done.set()
            return
        wait = RETRY_AFTER_SECONDS.get(socket.close_code or 0, 0.0)
        self._tasks.append(asyncio.create_task(self._resume(wait)))

    async def _resume(self, wait: float = 0.0) -> None:
        """The socket dropped: come back on the next server that answers (after `wait`, when
        the server asked for it), within `resume_within`."""
        await asyncio.sleep(max(wait, self._away_until - time.time()))
        deadline = time.monotonic() + self.resume_within
        after = self.servers.index(self.server) + 1 if self.server in self.servers else 0
        order = self.servers[after:] + self.servers[:after]
        attempt = 0
        while time.monotonic() < deadline:
            server = order[attempt % len(order)]
            attempt += 1
            try:
                await self._connect(server)
                logger.info("%s: socket back on %s", self.name, server)
                return
            except (OSError, TimeoutError, WebSocketException) as error:
                logger.info("%s: %s did not answer (%s)", self.name, server, error)
                await asyncio.sleep(0.25)
        logger.warning("%s: no server answered within %s s", self.name, self.resume_within)
        self.done.set()

    async def send(self, message: dict[str, Any]) -> bool:
        """Send if the socket is open; False when it is not (the message is dropped)."""
        socket = self._socket
        if socket is None:
            return False
        try:
            await socket.send(json.dumps({"v": VERSION, **message}))
        except ConnectionClosed:
            return False
        return True

    async def _heartbeat(self, socket: ClientConnection, every: float) -> None:
        while socket is self._socket:
            await asyncio.sleep(every)
            if socket is not self._socket:
                return  # a heartbeat of this socket never goes out on the next one
            await self.heartbeat()

    async def heartbeat(self) -> bool:
        """One heartbeat; its ack will confirm every report this socket carried before it.
        None while the last one waits for its ack (as the page): an older ack must not confirm
        what was sent after the heartbeat it answers."""
        if self._awaiting_ack:
            return False
        confirming = [e for e in self.outbox if e.sent_in == self.admissions]
        self._confirming, self._awaiting_ack = confirming, True
        if not await self.send({"type": "heartbeat"}):
            self._confirming, self._awaiting_ack = [], False
            return False
        return True

    # --- messages that must arrive --------------------------------------------------------------
    def deliver(self, message: dict[str, Any]) -> None:
        """Send `message` now if the socket is welcomed, and again on the next socket until a
        heartbeat's ack says the server handled it."""
        self.outbox.append(Outgoing(message))
        self._spawn(self._outbox_flush())

    async def _outbox_flush(self) -> None:
        if not self.admissions:
            return  # not welcomed yet: the welcome flushes
        for entry in list(self.outbox):
            if entry.sent_in == self.admissions:
                continue
            admission = self.admissions
            if not await self.send(entry.message):
                return  # no socket: the next welcome sends it
            entry.sent_in = admission

    def _outbox_retry(self) -> None:
        """The server could not take a report: nothing sent so far is confirmed by the next
        ack (the socket's frames are handled in order, so this error comes before the ack of
        any later heartbeat), and the outbox goes again shortly."""
        for entry in self.outbox:
            entry.sent_in = None
        self._confirming = []
        self._spawn(self._outbox_flush_later())

    async def _outbox_flush_later(self) -> None:
        await asyncio.sleep(OUTBOX_RETRY_SECONDS)
        await self._outbox_flush()

    # --- what the server says -----------------------------------------------------------------
    def handle(self, message: dict[str, Any]) -> None:
        """One message from the server (the socket's reader calls this)."""
        self.messages.append((time.time(), message))
        handler = getattr(self, f"_on_{message.get('type')}", None)
        if handler is not None:
            handler(message)
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_welcome(self, message: dict[str, Any]) -> None:
        self.welcome, self.you = message, message["you"]
        # A new socket: what the last one carried unconfirmed goes again on this one.
        self.admissions += 1
        self._confirming, self._awaiting_ack = [], False
        self._spawn(self._outbox_flush())
        if self._socket is not None:
            every = float(message["heartbeat_seconds"])
            self._tasks.append(asyncio.create_task(self._heartbeat(self._socket, every)))
        present = {peer["id"]: peer for peer in message["peers"]}
        self.peers = present
        for peer_id in set(self.links) - set(present):
            self._link_close(peer_id)  # left while this socket was away
        for peer_id in present:
            link = self.links.get(peer_id)
            if link is None:
                self._link_open(peer_id)
            elif link.pc.connectionState in ("failed", "closed"):
                link.schedule(link.restart)

    def _on_peer_joined(self, message: dict[str, Any]) -> None:
        peer = message["peer"]
        self.peers[peer["id"]] = {**peer, "status": "present"}
        self._link_close(peer["id"])  # a new join is a new connection on the peer's side
        self._link_open(peer["id"])

    def _on_peer_left(self, message: dict[str, Any]) -> None:
        self.peers.pop(message["peer_id"], None)
        self._link_close(message["peer_id"])

    def _on_peer_reconnecting(self, message: dict[str, Any]) -> None:
        if message["peer_id"] in self.peers:
            self.peers[message["peer_id"]]["status"] = "reconnecting"

    def _on_peer_resumed(self, message: dict[str, Any]) -> None:
        peer_id = message["peer_id"]
        if peer_id in self.peers:
            self.peers[peer_id]["status"] = "present"
        link = self.links.get(peer_id)
        if link is None:
            self._link_open(peer_id)
        elif link.pc.connectionState != "connected":
            link.schedule(link.restart)

    def _on_signal(self, message: dict[str, Any]) -> None:
        peer_id = message["from"]
        link = self.links.get(peer_id) or self._link_open(peer_id, offer=False)
        link.schedule(lambda: link.on_signal(message["data"]))

    def _on_ended(self, message: dict[str, Any]) -> None:
        self.ended = self.final = message

    def _on_replaced(self, message: dict[str, Any]) -> None:
        self.final = message

    def _on_removed(self, message: dict[str, Any]) -> None:
        self.final = message

    def _on_error(self, message: dict[str, Any]) -> None:
        self.errors.append(message)
        logger.warning("%s: server says %s: %s", self.name, message["code"], message["message"])
        if message.get("ref") == "media_state" and message.get("code") in RETRIED_ERRORS:
            self._outbox_retry()

    def _on_heartbeat_ack(self, message: dict[str, Any]) -> None:
        confirmed = self._confirming
        self._confirming, self._awaiting_ack = [], False
        self.outbox = [e for e in self.outbox if not any(e is c for c in confirmed)]

    def _link_open(self, peer_id: int, *, offer: bool = True) -> PeerLink:
        link = self.links[peer_id] = PeerLink(self, peer_id)
        if offer and not link.polite:
            link.schedule(link.offer)
        return link

    def _link_close(self, peer_id: int) -> None:
        link = self.links.pop(peer_id, None)
        if link is not None:
            self._spawn(link.close())

    def media_report(self, link: PeerLink, *, connected: bool) -> None:
        if link.peer_id not in self.peers or (not connected and not link.reported):
            return  # nothing to say about a peer that left, nor a link never reported up
        link.reported = connected
        message: dict[str, Any] = {
            "type": "media_state",
            "peer": link.peer_id,
            "state": "connected" if connected else "disconnected",
        }
        # When it changed: now for a link that came up, the last frame for one that went
        # down. The report may go again later and must still count from then.
        since = time.time() if connected else link.media_at
        if since:
            message["since"] = datetime.fromtimestamp(since, UTC).isoformat()
        if connected and link.candidate_type:
            message["candidate_type"] = link.candidate_type
        self.deliver(message)

    # --- for the caller -----------------------------------------------------------------------
    async def wait_for(
        self,
        kind: str | tuple[str, ...],
        *,
        timeout: float,
        since: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda message: True,
    ) -> dict[str, Any]:
        """The first message of type `kind` (or one of the types), from index `since` of
        `messages` on, that satisfies `where`."""
        kinds = (kind,) if isinstance(kind, str) else kind

        def found() -> dict[str, Any] | None:
            return next(
                (m for _, m in self.messages[since:] if m.get("type") in kinds and where(m)),
                None,
            )

        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        message = found()
        if message is None:  # the condition said otherwise; cannot happen
            raise LookupError(kind)
        return message

    async def until(self, condition: Callable[[], bool], *, timeout: float) -> None:
        """Poll `condition` (e.g. frames received) every 50 ms until true or timeout."""
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.05)

    async def end(self) -> bool:
        """End the call for everyone (the expert's End); False when there was no socket."""
        return await self.send({"type": "end"})

    async def leave(self) -> None:
        await self.send({"type": "leave"})

    def drop(self, away: float = 0.0) -> None:
        """The socket dies without a close, as when the network under it goes; it comes back
        `away` seconds later (through the grace when that is short). The peer connections
        are not touched: media that takes another path goes on."""
        self._away_until = time.time() + away
        socket = self._socket
        if socket is not None:
            socket.transport.abort()

    async def close(self) -> None:
        """Close the socket (without `leave`) and every peer connection."""
        self._closing = True
        await self._disconnect()
        for peer_id in list(self.links):
            link = self.links.pop(peer_id)
            with contextlib.suppress(Exception):
                await link.close()
        for task in list(self._background):
            task.cancel()


# --- logging in -------------------------------------------------------------------------------


class _FormInputs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        fields = dict(attrs)
        if tag == "input" and fields.get("name"):
            self.values[str(fields["name"])] = fields.get("value") or ""


def login(server: str, email: str, password: str) -> dict[str, str]:
    """Log in through the login form, as a person does; returns the session's cookies."""
    if urllib.parse.urlsplit(server).scheme not in ("http", "https"):
        raise LoginFailed(f"{server} is not an http(s) URL.")
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    page_url = f"{server}/accounts/login/"
    with opener.open(page_url, timeout=10) as response:
        form = _FormInputs()
        form.feed(response.read().decode())
    token = form.values.get("csrfmiddlewaretoken")
    if not token:
        raise LoginFailed(f"No login form at {page_url}.")
    body = urllib.parse.urlencode(
        {"csrfmiddlewaretoken": token, "login": email, "password": password}
    ).encode()
    request = urllib.request.Request(page_url, data=body, headers={"Referer": page_url})  # noqa: S310 (scheme checked above)
    with opener.open(request, timeout=10):
        pass
    cookies = {cookie.name: cookie.value or "" for cookie in jar}
    if "sessionid" not in cookies:
        raise LoginFailed(f"{email} could not log in at {page_url} (wrong password?).")
    return cookies
