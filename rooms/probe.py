"""The far end of the room page's connectivity test (static/js/room/probe.js).

Before joining a call the browser opens a WebRTC connection to a peer run here with aiortc,
through the same ICE servers (STUN, TURN) the call will use, and sends pings on a data channel
named "probe" that this peer echoes back. The browser measures round-trip time, loss and which
candidate type got through; this side only answers and echoes, and measures nothing.

This peer also offers a host candidate on 127.0.0.1, which aioice (aiortc's ICE) never gathers
by itself: it leaves loopback out of its host addresses (`aioice.ice.get_host_addresses`, as
RFC 8445 §5.1.1.1 asks). Where the machine has no other interface (a laptop offline, a
loopback-only sandbox) and no STUN or TURN server is configured (`make run`), the peer then
offered no candidate at all, and the test said "no connection" while two browsers on that same
machine connected in half a second. The browser's own candidates do not help the other way:
Chromium names them by mDNS (`<uuid>.local`), which resolves by multicast, and loopback carries
none. With the loopback candidate, a browser on this machine reaches the peer, which learns the
browser's address from its checks (a peer-reflexive candidate). A browser elsewhere gains
nothing from it: its checks to 127.0.0.1 stay on its own machine, where nothing holds this
peer's ICE credentials, so a network that blocks the call still gets the bad verdict.

Offer/answer is not trickled: aiortc gathers every candidate inside `setLocalDescription`
(aioice caps a STUN/TURN server that does not answer at 5 s), so the answer carries them all
and one HTTP request does the whole negotiation.

Each peer holds sockets and, through TURN, an allocation on the relay, so they are bounded:
at most PROBE_MAX_CONCURRENT per process, one per owner (a new test from the same person closes
the older one: a reload must not be refused by its own leftover), and each lives at most
PROBE_MAX_SECONDS. The registry is plain module state: it is only touched from the process's
asyncio event loop (the calling view is async), and every check-then-insert below happens with
no `await` in between, so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription

from rooms.errors import RoomsError

logger = logging.getLogger(__name__)

# The browser test runs ~5 s after connecting; this leaves room for gathering and a slow
# connection setup, and still frees the slot soon after a tab that vanished.
PROBE_MAX_SECONDS = 15.0
PROBE_MAX_CONCURRENT = 20
# A browser's data-channel-only offer with a dozen candidates is 1–3 kB.
OFFER_MAX_CHARS = 20_000
CHANNEL_LABEL = "probe"


class ProbeRefused(RoomsError):
    """The test cannot run with this offer; the message is for the person.

    `status` is the HTTP status the view answers with, so the view needs one except clause.
    """

    status = 400


class ProbeBusy(ProbeRefused):
    """Too many tests are running in this process right now; worth retrying soon."""

    status = 429


@dataclass(eq=False)
class _Probe:
    owner: str
    pc: RTCPeerConnection
    negotiation: asyncio.Task[None] | None = None
    expiry: asyncio.Task[None] | None = None
    # None while running; then why it was closed, as told to a caller still waiting for it.
    closed_because: str | None = None


LOOPBACK = "127.0.0.1"
# Whether aioice gathers a loopback host candidate: only inside a probe's negotiation (it sets
# this in its own task; the gathering tasks aiortc spawns inherit it). Any other aiortc peer in
# the process gathers what aioice alone would.
_gather_loopback: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "probe_gather_loopback", default=False
)
_aioice_host_addresses = aioice.ice.get_host_addresses


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's host addresses, plus loopback for a probe (see the module's docstring).
    aioice looks `get_host_addresses` up in its module when it gathers, so this replaces it."""
    addresses = list(_aioice_host_addresses(use_ipv4, use_ipv6))
    if _gather_loopback.get() and use_ipv4 and LOOPBACK not in addresses:
        addresses.append(LOOPBACK)
    return addresses


aioice.ice.get_host_addresses = _host_addresses

# owner → the one running probe of that owner.
_probes: dict[str, _Probe] = {}
# Closes under way; held here because the event loop keeps only weak references to tasks.
_closing: set[asyncio.Task[None]] = set()

REPLACED = "A newer connection test from your account replaced this one."
EXPIRED = "The connection test took too long to start. Try again."
STOPPED = "The connection test was stopped."


def probes_running() -> int:
    """How many probe peers this process holds now (for health pages and tests)."""
    return len(_probes)


async def probe_answer(
    *, offer: dict[str, Any], ice_servers: list[dict[str, Any]], owner: str
) -> dict[str, str]:
    """Answer the browser's offer with a new echoing peer; returns `{"type", "sdp"}`.

    Raises ProbeBusy when the process is at its limit and ProbeRefused when the offer cannot
    be used or the test was replaced by a newer one of the same owner while it was starting.
    """
    description = _offer_parse(offer)
    # Converted before anything is registered: a malformed server list is the caller's bug
    # and must not leave a half-made probe behind.
    servers = [
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
        for s in ice_servers
    ]

    older = _probes.pop(owner, None)
    if older is None and len(_probes) >= PROBE_MAX_CONCURRENT:
        logger.warning("probe refused: %s tests running", len(_probes))
        raise ProbeBusy("Too many connection tests are running right now. Try again in a minute.")
    if older is not None:
        _probe_close(older, REPLACED)

    # Always an explicit list: with no configuration aiortc falls back to a public STUN server.
    probe = _Probe(owner=owner, pc=RTCPeerConnection(RTCConfiguration(iceServers=servers)))
    _probes[owner] = probe
    _probe_wire(probe)
    probe.expiry = asyncio.create_task(_probe_expire(probe))
    # A task of its own, shielded from the request: aioice's gathering does not survive being
    # cancelled or having its sockets closed under it (its STUN retries keep firing into closed
    # transports), so a probe is closed only once its negotiation has ended.
    probe.negotiation = asyncio.create_task(_probe_negotiate(probe.pc, description))
    try:
        await asyncio.shield(probe.negotiation)
    except BaseException:
        # A refused offer, or the request went away (cancelled): the peer must not outlive it.
        _probe_close(probe, STOPPED)
        raise
    if probe.closed_because is not None:
        # Replaced or expired while gathering; its answer would lead nowhere.
        raise ProbeRefused(probe.closed_because)
    return {"type": "answer", "sdp": probe.pc.localDescription.sdp}


async def probe_close_all() -> None:
    """Close every probe of this process and wait until they are closed (shutdown, tests)."""
    for probe in list(_probes.values()):
        _probe_close(probe, STOPPED)
    await asyncio.gather(*_closing)


def _offer_parse(offer: Any) -> RTCSessionDescription:
    if not isinstance(offer, dict):
        raise ProbeRefused('The connection test needs a JSON object with "type" and "sdp".')
    if offer.get("type") != "offer":
        raise ProbeRefused('The connection test needs an offer: "type" must be "offer".')
    sdp = offer.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise ProbeRefused('The offer\'s "sdp" must be a non-empty string.')
    if len(sdp) > OFFER_MAX_CHARS:
        raise ProbeRefused(f"The offer is too long (at most {OFFER_MAX_CHARS:,} characters).")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:
        # aiortc's parser fails on bad input with whatever it hits (AssertionError, IndexError,
        # ValueError…); for input from a browser every one of them means "malformed".
        raise ProbeRefused(
            "The offer's SDP could not be read. Reload the page and try again."
        ) from exc
    kinds = [m.kind for m in parsed.media]
    if kinds != ["application"]:
        # Only a data channel: audio or video would have this server decode media for nothing.
        raise ProbeRefused(
            'The offer must carry exactly one data channel (the "probe" channel) and no media.'
        )
    return RTCSessionDescription(sdp=sdp, type="offer")


async def _probe_negotiate(pc: RTCPeerConnection, offer: RTCSessionDescription) -> None:
    try:
        await pc.setRemoteDescription(offer)
    except Exception as exc:
        # What got past the parser but not aiortc's checks (no ICE credentials, no DTLS
        # fingerprint…) is still the browser's input, not our fault.
        raise ProbeRefused(
            f"The browser's offer could not be used ({exc}). Reload the page and try again."
        ) from exc
    # Gathers every candidate before it returns: the answer needs no trickle. This task's own
    # context: the loopback candidate is this peer's alone.
    _gather_loopback.set(True)
    await pc.setLocalDescription(await pc.createAnswer())


def _probe_wire(probe: _Probe) -> None:
    pc = probe.pc

    @pc.on("datachannel")
    def on_datachannel(channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL:
            channel.close()
            return

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            # Straight back, in this callback: any delay here is added to the measured RTT.
            if channel.readyState == "open":
                channel.send(message)

    @pc.on("connectionstatechange")
    def on_connectionstatechange() -> None:
        if pc.connectionState in ("failed", "closed"):
            _probe_close(probe, "The connection to the test server failed.")


async def _probe_expire(probe: _Probe) -> None:
    await asyncio.sleep(PROBE_MAX_SECONDS)
    logger.info("probe of %s closed after %s s", probe.owner, PROBE_MAX_SECONDS)
    _probe_close(probe, EXPIRED)


def _probe_close(probe: _Probe, because: str) -> None:
    """Free the probe's slot now and close its peer in the background; the first call wins."""
    if _probes.get(probe.owner) is probe:
        del _probes[probe.owner]
    if probe.closed_because is not None:
        return
    probe.closed_because = because
    if probe.expiry is not None and probe.expiry is not asyncio.current_task():
        probe.expiry.cancel()
    task = asyncio.create_task(_probe_close_when_idle(probe))
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def _probe_close_when_idle(probe: _Probe) -> None:
    negotiation = probe.negotiation
    if negotiation is not None:
        # Gathering ends on its own within aioice's 5 s per server (see probe_answer).
        await asyncio.wait([negotiation])
        if not negotiation.cancelled():
            # Marks a failure as seen when nobody awaited it (its request was cancelled).
            negotiation.exception()
    await probe.pc.close()
