"""The connectivity test's server peer (rooms/probe.py) against a real aiortc client in the same
event loop, as the browser uses it: one offer with a "probe" data channel, one answer, pings
echoed back. Everything stays on 127.0.0.1: host candidates only, and no ICE servers.

The machine is made to look like a laptop with no network (or `make run`'s one machine seen by a
peer that may only use loopback): aioice finds no host address at all. The client plays a
browser that may use loopback (Chromium's --allow-loopback-in-peer-connection)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)

from rooms import probe
from rooms.probe import ProbeBusy, ProbeRefused, probe_answer, probes_running


def _no_host_address(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    # What aioice gathers on a machine whose only interface is loopback.
    return []


@dataclass(eq=False)
class Client:
    """The browser's side: a peer with the "probe" channel, and the echoes it got back."""

    pc: RTCPeerConnection
    channel: RTCDataChannel
    echoes: asyncio.Queue[str | bytes] = field(default_factory=asyncio.Queue)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self) -> dict[str, Any]:
        return {"type": "offer", "sdp": self.pc.localDescription.sdp}

    async def ping(self, message: str | bytes, timeout: float = 2.0) -> str | bytes:
        self.channel.send(message)
        return await asyncio.wait_for(self.echoes.get(), timeout)


class Clients(Protocol):
    def __call__(self, *, loopback: bool = True) -> Awaitable[Client]: ...


@pytest.fixture
async def clients(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Clients]:
    """Makes clients whose offer is ready; closes them, and every probe, at the end."""
    monkeypatch.setattr(probe, "_aioice_host_addresses", _no_host_address)
    made: list[Client] = []

    async def make(*, loopback: bool = True) -> Client:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        channel = pc.createDataChannel("probe", ordered=False, maxRetransmits=0)
        client = Client(pc=pc, channel=channel)
        channel.on("open", client.opened.set)
        channel.on("close", client.closed.set)
        channel.on("message", client.echoes.put_nowait)
        # The browser's loopback candidate, gathered the way the probe gathers its own.
        allowed = probe._gather_loopback.set(loopback)
        try:
            await pc.setLocalDescription(await pc.createOffer())
        finally:
            probe._gather_loopback.reset(allowed)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.pc.close()
    await probe.probe_close_all()
    assert probes_running() == 0


async def _connect(client: Client, owner: str) -> None:
    answer = await probe_answer(offer=client.offer(), ice_servers=[], owner=owner)
    await client.pc.setRemoteDescription(RTCSessionDescription(**answer))
    await asyncio.wait_for(client.opened.wait(), 10)


async def test_probe_echoes_every_ping_unchanged_so_the_browser_can_measure_rtt(
    clients: Clients,
) -> None:
    client = await clients()
    answer = await probe_answer(offer=client.offer(), ice_servers=[], owner="u1")

    # Not trickled: the answer already names the probe's candidate, on loopback, although
    # aioice finds no host address on this machine.
    assert answer["type"] == "answer"
    assert "a=candidate:" in answer["sdp"]
    assert " 127.0.0.1 " in answer["sdp"]
    await client.pc.setRemoteDescription(RTCSessionDescription(**answer))
    await asyncio.wait_for(client.opened.wait(), 10)

    rtts = []
    for seq in range(20):
        sent = json.dumps({"seq": seq, "t": time.monotonic()})
        echoed = await client.ping(sent)
        assert echoed == sent
        rtts.append(time.monotonic() - json.loads(echoed)["t"])
    assert await client.ping(b"\x00\x01binary") == b"\x00\x01binary"
    # Loopback, one event loop: anything near a second would be a delay in the echo.
    assert max(rtts) < 0.5
    assert probes_running() == 1


@pytest.mark.parametrize(
    ("offer", "message"),
    [
        (["offer", "v=0"], 'needs a JSON object with "type" and "sdp"'),
        ("v=0", 'needs a JSON object with "type" and "sdp"'),
        ({"sdp": "v=0"}, '"type" must be "offer"'),
        ({"type": "answer", "sdp": "v=0"}, '"type" must be "offer"'),
        ({"type": "offer"}, '"sdp" must be a non-empty string'),
        ({"type": "offer", "sdp": 12}, '"sdp" must be a non-empty string'),
        ({"type": "offer", "sdp": " \r\n"}, '"sdp" must be a non-empty string'),
        ({"type": "offer", "sdp": "v=0\r\n" + "x" * 20_000}, "too long (at most 20,000"),
        # aiortc's parser raises AssertionError on this one.
        ({"type": "offer", "sdp": "m=audio x\r\n"}, "SDP could not be read"),
        ({"type": "offer", "sdp": "v=0\r\n"}, "exactly one data channel"),
        (
            {
                "type": "offer",
                "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
                "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n",
            },
            "ICE username fragment or password is missing",
        ),
    ],
)
async def test_probe_answer_refuses_a_malformed_offer_and_keeps_nothing(
    clients: Clients, offer: Any, message: str
) -> None:
    with pytest.raises(ProbeRefused, match=re.escape(message)) as refused:
        await probe_answer(offer=offer, ice_servers=[], owner="u1")
    assert refused.value.status == 400
    assert probes_running() == 0


async def test_probe_answer_refuses_an_offer_with_media(clients: Clients) -> None:
    client = await clients()
    with_video = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    with_video.addTransceiver("video", direction="recvonly")
    with_video.createDataChannel("probe")
    try:
        await with_video.setLocalDescription(await with_video.createOffer())
        offer = {"type": "offer", "sdp": with_video.localDescription.sdp}
        with pytest.raises(ProbeRefused, match="no media"):
            await probe_answer(offer=offer, ice_servers=[], owner="u1")
    finally:
        await with_video.close()
    # The same person's next, well-formed offer is taken.
    await _connect(client, "u1")


async def test_an_offer_at_the_length_limit_is_taken(clients: Clients) -> None:
    client = await clients()
    sdp = client.offer()["sdp"]
    padding = "a=x-pad:" + "p" * (probe.OFFER_MAX_CHARS - len(sdp) - len("a=x-pad:\r\n")) + "\r\n"
    padded = sdp + padding
    assert len(padded) == probe.OFFER_MAX_CHARS
    answer = await probe_answer(offer={"type": "offer", "sdp": padded}, ice_servers=[], owner="u1")
    assert answer["type"] == "answer"


async def test_a_new_probe_of_the_same_owner_closes_the_older(clients: Clients) -> None:
    first, second, other = await clients(), await clients(), await clients()
    await _connect(first, "u1")
    await _connect(other, "u2")

    await _connect(second, "u1")

    # The older peer is gone: its channel closed by the server, and no more echoes.
    await asyncio.wait_for(first.closed.wait(), 5)
    assert first.channel.readyState == "closed"
    assert await second.ping("after") == "after"
    assert await other.ping("still here") == "still here"
    assert probes_running() == 2


async def test_a_probe_replaced_while_it_gathers_answers_that_it_was_replaced(
    clients: Clients,
) -> None:
    client = await clients()
    # A STUN server on a loopback port nobody listens on: aioice waits its 5 s for it, which
    # keeps the first probe gathering while the second one comes in.
    deaf_stun = [{"urls": ["stun:127.0.0.1:9"]}]
    slow = asyncio.create_task(
        probe_answer(offer=client.offer(), ice_servers=deaf_stun, owner="u1")
    )
    await asyncio.sleep(0.2)
    assert not slow.done()

    await probe_answer(offer=client.offer(), ice_servers=[], owner="u1")

    with pytest.raises(ProbeRefused, match="A newer connection test .* replaced this one"):
        await asyncio.wait_for(slow, 10)
    assert probes_running() == 1


async def test_a_request_that_goes_away_while_gathering_leaves_no_probe(
    clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    client = await clients()
    deaf_stun = [{"urls": ["stun:127.0.0.1:9"]}]
    request = asyncio.create_task(
        probe_answer(offer=client.offer(), ice_servers=deaf_stun, owner="u1")
    )
    await asyncio.sleep(0.2)
    assert probes_running() == 1

    request.cancel()

    with pytest.raises(asyncio.CancelledError):
        await request
    assert probes_running() == 0
    # The gathering is left to finish before the peer closes: closed under it, aioice's STUN
    # retries (every 0.5, 1, 2 s…) fire into the closed sockets and asyncio logs errors.
    await asyncio.sleep(1.5)
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


async def test_the_twenty_first_concurrent_probe_is_refused(clients: Clients) -> None:
    assert probe.PROBE_MAX_CONCURRENT == 20
    client = await clients()
    # The probes need not connect to hold their slots: the same offer answered 20 times.
    for n in range(20):
        await probe_answer(offer=client.offer(), ice_servers=[], owner=f"u{n}")
    assert probes_running() == 20

    with pytest.raises(ProbeBusy, match="Too many connection tests are running right now") as busy:
        await probe_answer(offer=client.offer(), ice_servers=[], owner="u20")
    assert busy.value.status == 429
    assert probes_running() == 20

    # Someone already holding a slot may start over: the new test takes the old one's slot.
    await probe_answer(offer=client.offer(), ice_servers=[], owner="u3")
    assert probes_running() == 20


async def test_a_probe_is_closed_after_the_maximum_time(
    clients: Clients, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe, "PROBE_MAX_SECONDS", 1.0)
    client = await clients()
    started = time.monotonic()
    await _connect(client, "u1")
    assert await client.ping("early") == "early"

    await asyncio.wait_for(client.closed.wait(), 5)

    assert time.monotonic() - started >= 1.0
    assert probes_running() == 0


async def test_a_probe_is_closed_when_the_browser_closes_its_side(clients: Clients) -> None:
    client = await clients()
    await _connect(client, "u1")

    await client.pc.close()

    for _ in range(50):
        if probes_running() == 0:
            break
        await asyncio.sleep(0.1)
    assert probes_running() == 0


async def test_a_channel_with_another_name_gets_no_echo(clients: Clients) -> None:
    client = await clients()
    # A second channel rides the SCTP association the offer already negotiated.
    other = client.pc.createDataChannel("other")
    other_closed = asyncio.Event()
    other.on("close", other_closed.set)
    await _connect(client, "u1")

    await asyncio.wait_for(other_closed.wait(), 5)
    assert await client.ping("probe still echoes") == "probe still echoes"


async def test_only_the_probe_gathers_a_loopback_candidate(clients: Clients) -> None:
    """Other aiortc peers of the process (a participant, say) gather what aioice alone
    gathers: here, nothing."""
    client = await clients()
    answer = await probe_answer(offer=client.offer(), ice_servers=[], owner="u1")
    assert " 127.0.0.1 " in answer["sdp"]
    other = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        other.createDataChannel("probe")
        await other.setLocalDescription(await other.createOffer())
        assert "a=candidate:" not in other.localDescription.sdp
    finally:
        await other.close()


async def test_a_browser_that_can_reach_nothing_never_connects_to_the_probe(
    clients: Clients,
) -> None:
    """The loopback candidate does not make a blocked network look fine: a browser with no
    candidate of its own (nothing it can send from) gets no channel, which the page reports as
    "no connection"."""
    client = await clients(loopback=False)
    answer = await probe_answer(offer=client.offer(), ice_servers=[], owner="u1")
    await client.pc.setRemoteDescription(RTCSessionDescription(**answer))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.opened.wait(), 4)
