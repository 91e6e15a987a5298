"""The scripted participant's negotiation with a peer, with signals relayed in memory instead of
through a server (the server's part is in test_call_e2e.py): perfect negotiation when both
sides offer at once, a restart from either side, and the frame log the call test trusts."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aioice.ice
import pytest

from rooms.tools import participant as participant_module
from rooms.tools.participant import FrameLog, Participant, overlap_seconds


class Relayed(Participant):
    """A participant whose server is a pipe to one other participant."""

    other: Relayed

    def __init__(self, name: str) -> None:
        super().__init__(["http://127.0.0.1:1"], f"{name}@example.test", "-", 1, name=name)
        self.sent: list[dict[str, Any]] = []
        self.sent_at: list[float] = []

    async def send(self, message: dict[str, Any]) -> bool:
        self.sent.append(message)
        self.sent_at.append(time.time())
        if message["type"] == "signal":
            relayed = {"v": 1, "type": "signal", "from": self.you_id, "data": message["data"]}
            self.other.handle(relayed)
        return True

    def media_states(self) -> list[str]:
        return [m["state"] for m in self.sent if m["type"] == "media_state"]


def _welcome(you: int, peer: int) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "welcome",
        "you": {"id": you, "name": f"P{you}", "role": "client"},
        "peers": [{"id": peer, "name": f"P{peer}", "role": "client", "status": "present"}],
        "ice_servers": [],  # host candidates on loopback only (see the fixture)
        "heartbeat_seconds": 5,
        "resumed": False,
    }


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"]


@pytest.fixture
async def pair(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Relayed, Relayed]]:
    """Participant 1 (impolite) and 2 (polite), connected to each other on 127.0.0.1 only."""
    # aioice never offers 127.0.0.1 as a host candidate; here it is the only one.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", _loopback_only)
    one, two = Relayed("one"), Relayed("two")
    one.other, two.other = two, one
    yield one, two
    await one.close()
    await two.close()


def _reported(who: Relayed) -> bool:
    return bool(who.media_states())


def _frames(who: Participant, peer: int) -> int:
    link = who.links.get(peer)
    return link.frames.count if link else 0


async def _media_flows(one: Relayed, two: Relayed, *, more_than: int = 0) -> None:
    await one.until(
        lambda: _frames(one, 2) > more_than + 10 and _frames(two, 1) > more_than + 10,
        timeout=15,
    )


async def test_the_impolite_side_offers_and_media_flows_both_ways(
    pair: tuple[Relayed, Relayed],
) -> None:
    one, two = pair
    one.handle(_welcome(1, 2))
    two.handle(_welcome(2, 1))
    await _media_flows(one, two)
    assert (one.links[2].polite, two.links[1].polite) == (False, True)
    offers = [m for m in one.sent + two.sent if m["type"] == "signal"]
    assert [m["data"]["description"]["type"] for m in offers] == ["offer", "answer"]
    assert offers[0]["to"] == 2
    for who in (one, two):
        await who.until(functools.partial(_reported, who), timeout=5)
        assert who.media_states() == ["connected"]
        report = next(m for m in who.sent if m["type"] == "media_state")
        assert report["candidate_type"] == "host"


async def test_when_both_offer_at_once_the_polite_side_gives_way(
    pair: tuple[Relayed, Relayed],
) -> None:
    one, two = pair
    one.handle(_welcome(1, 2))
    two.handle(_welcome(2, 1))
    two.links[1].schedule(two.links[1].offer)  # the polite side offers too: a collision
    await _media_flows(one, two)
    # The impolite side kept its connection; the polite one took the offer on a fresh one.
    assert one.links[2].connections == 1
    assert two.links[1].connections == 2


@pytest.mark.parametrize("restarting", [1, 2])
async def test_a_restart_from_either_side_brings_the_media_back_on_new_connections(
    pair: tuple[Relayed, Relayed], restarting: int
) -> None:
    one, two = pair
    one.handle(_welcome(1, 2))
    two.handle(_welcome(2, 1))
    await _media_flows(one, two)
    before = min(_frames(one, 2), _frames(two, 1))
    side = one if restarting == 1 else two
    link = side.links[2 if restarting == 1 else 1]
    link.schedule(link.restart)
    await one.until(lambda: one.links[2].connections == two.links[1].connections == 2, timeout=10)
    await _media_flows(one, two, more_than=before)
    await side.until(lambda: side.media_states()[-1:] == ["connected"], timeout=5)
    assert side.media_states() == ["connected", "disconnected", "connected"]


async def test_a_peer_that_resumes_with_media_up_keeps_its_connection(
    pair: tuple[Relayed, Relayed],
) -> None:
    one, two = pair
    one.handle(_welcome(1, 2))
    two.handle(_welcome(2, 1))
    await _media_flows(one, two)
    one.handle({"v": 1, "type": "peer_reconnecting", "peer_id": 2})
    one.handle({"v": 1, "type": "peer_resumed", "peer_id": 2})
    assert one.peers[2]["status"] == "present"
    assert one.links[2].connections == 1
    one.handle({"v": 1, "type": "ended", "reason": "ended_by_expert", "charge": None})
    assert one.ended is not None and one.ended["reason"] == "ended_by_expert"


def test_frames_further_apart_than_a_second_split_the_received_intervals() -> None:
    log = FrameLog()
    for at in (10.0, 10.5, 11.4, 13.0, 13.9):
        log.add(at)
    assert (log.count, log.intervals) == (5, [[10.0, 11.4], [13.0, 13.9]])
    assert log.until(13.5) == [[10.0, 11.4], [13.0, 13.5]]
    assert overlap_seconds(log.intervals, [[11.0, 13.5]]) == pytest.approx(0.9)


class Offline(Participant):
    """A participant whose socket is a switch: `send` succeeds while `online`."""

    def __init__(self) -> None:
        super().__init__(["http://127.0.0.1:1"], "p@example.test", "-", 1, name="p")
        self.online = True
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> bool:
        if self.online:
            self.sent.append(message)
        return self.online

    def reports(self) -> list[str]:
        return [m["since"] for m in self.sent if m["type"] == "media_state"]


def _report(since: str) -> dict[str, Any]:
    return {"type": "media_state", "peer": 2, "state": "connected", "since": since}


async def _settled(who: Participant) -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_a_media_report_goes_again_on_the_next_socket_until_a_heartbeat_confirms_it() -> None:
    who = Offline()
    who.deliver(_report("t0"))  # before the welcome: held
    await _settled(who)
    assert who.reports() == []
    who.handle(_welcome(1, 2) | {"peers": []})
    await _settled(who)
    assert who.reports() == ["t0"]
    # The socket dies before a heartbeat confirms it; the next one carries it again.
    who.handle(_welcome(1, 2) | {"peers": [], "resumed": True})
    await _settled(who)
    assert who.reports() == ["t0", "t0"]
    assert await who.heartbeat()
    who.deliver(_report("t1"))  # after the heartbeat: not confirmed by its ack
    await _settled(who)
    who.handle({"v": 1, "type": "heartbeat_ack"})
    assert [e.message["since"] for e in who.outbox] == ["t1"]
    who.online = False
    who.deliver(_report("t2"))  # no socket: waits for the next welcome
    await _settled(who)
    who.online = True
    who.handle(_welcome(1, 2) | {"peers": [], "resumed": True})
    await _settled(who)
    assert who.reports() == ["t0", "t0", "t1", "t1", "t2"]


async def test_a_media_report_the_server_could_not_take_goes_again_a_moment_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(participant_module, "OUTBOX_RETRY_SECONDS", 0.1)
    who = Offline()
    who.handle(_welcome(1, 2) | {"peers": []})
    who.deliver(_report("t0"))
    await _settled(who)
    assert await who.heartbeat()  # would confirm t0, but the server did not take it
    who.handle({"v": 1, "type": "error", "code": "unavailable", "ref": "media_state"} | _MSG)
    who.handle({"v": 1, "type": "heartbeat_ack"})
    assert len(who.outbox) == 1
    await who.until(lambda: who.reports() == ["t0", "t0"], timeout=2)
    assert await who.heartbeat()
    who.handle({"v": 1, "type": "heartbeat_ack"})
    assert who.outbox == []
    # Another message's refusal does not repeat media reports.
    who.handle({"v": 1, "type": "error", "code": "unavailable", "ref": "stats"} | _MSG)
    await asyncio.sleep(0.3)
    assert who.reports() == ["t0", "t0"]


_MSG = {"message": "Try again in a moment."}


async def test_media_reports_say_when_the_link_changed(pair: tuple[Relayed, Relayed]) -> None:
    one, two = pair
    one.handle(_welcome(1, 2))
    two.handle(_welcome(2, 1))
    await _media_flows(one, two)
    up = next(m for m in one.sent if m["type"] == "media_state")
    link = one.links[2]
    link.schedule(link.restart)
    await one.until(lambda: "disconnected" in one.media_states(), timeout=5)
    down = next(m for m in one.sent if m.get("state") == "disconnected")
    (up_at, down_at) = (one.sent_at[one.sent.index(m)] for m in (up, down))
    came, went = (datetime.fromisoformat(m["since"]).timestamp() for m in (up, down))
    # Up when the connection came up (before the first frame); down at the last frame before
    # the restart (30 a second), a moment before the report.
    assert came <= up_at
    assert came < one.received[2].intervals[0][0]
    assert down_at - 0.2 < went <= down_at


async def test_a_dropped_socket_comes_back_when_the_network_does_and_waits_out_a_4429(
    monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    from websockets.asyncio.server import ServerConnection, serve

    monkeypatch.setattr(participant_module, "RETRY_AFTER_SECONDS", {4429: 0.5})
    opened: list[float] = []

    async def room(socket: ServerConnection) -> None:
        opened.append(time.monotonic())
        if len(opened) == 1:
            await socket.send(json.dumps(_welcome(1, 2) | {"peers": []}))
        elif len(opened) == 2:
            await socket.close(4429, "too many joins")
            return
        else:
            await socket.send(json.dumps(_welcome(1, 2) | {"peers": [], "resumed": True}))
        await socket.wait_closed()

    async with serve(room, "127.0.0.1", unused_tcp_port):
        who = Participant([f"http://127.0.0.1:{unused_tcp_port}"], "p@example.test", "-", 1)
        who.cookies = {"sessionid": "x"}
        await who.join()
        dropped = time.monotonic()
        who.drop(away=0.3)  # the network goes for 0.3 s; then the server says wait
        await who.until(lambda: len(opened) == 3, timeout=5)
        await who.wait_for("welcome", timeout=2, where=lambda m: m["resumed"])
        assert who.close_codes == [1006, 4429]
        assert opened[1] - dropped >= 0.3
        assert opened[2] - opened[1] >= 0.5
        assert not who.done.is_set()
        await who.close()


async def test_a_heartbeat_waits_for_the_last_ack_so_that_it_confirms_only_what_came_before() -> (
    None
):
    who = Offline()
    who.handle(_welcome(1, 2) | {"peers": []})
    who.deliver(_report("a"))
    await _settled(who)
    assert await who.heartbeat()
    who.deliver(_report("b"))
    await _settled(who)
    assert not await who.heartbeat()  # the first is not answered yet: none goes
    who.handle({"v": 1, "type": "heartbeat_ack"})  # answers the first: "a" only
    assert [e.message["since"] for e in who.outbox] == ["b"]
    assert await who.heartbeat()
    who.handle({"v": 1, "type": "heartbeat_ack"})
    assert who.outbox == []
