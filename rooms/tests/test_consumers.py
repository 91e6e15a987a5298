"""The signaling socket through the whole ASGI stack (session cookie, origin check, routing)
on the Redis channel layer: admission and refusals, relay, presence, media reports, the end."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.test import override_settings
from django.utils import timezone

from accounts.tests.factories import UserFactory
from billing.models import Settlement
from rooms import services
from rooms.ice import turn_credential
from rooms.models import (
    CallStats,
    CloseReason,
    MediaLink,
    Presence,
    Room,
    RoomState,
    Seat,
    SeatState,
)
from rooms.tests.signaling import Call, Socket, call_create, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}


@pytest.fixture
def call() -> Iterator[Call]:
    yield call_create()


async def _both_in(call: Call) -> tuple[Socket, Socket]:
    """The expert in first, then the client (whose join the expert has heard)."""
    expert, client = await _sockets(call)
    await expert.open()
    await client.open()
    await expert.receive_type("peer_joined")
    return expert, client


async def _sockets(call: Call) -> tuple[Socket, Socket]:
    expert = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.expert))
    client = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    return expert, client


@override_settings(
    STUN_URLS=["stun:127.0.0.1:3478"], TURN_URLS=["turn:127.0.0.1:3478"], TURN_SECRET="s3cret"
)
async def test_the_expert_and_the_client_are_welcomed_and_the_call_goes_live(call: Call) -> None:
    expert, client = await _sockets(call)
    welcome = await expert.open()
    assert welcome["you"] == {
        "id": call.expert.pk,
        "name": call.expert.display_name,
        "role": "expert",
    }
    assert welcome["peers"] == []
    assert welcome["room"]["state"] == "open"
    assert welcome["heartbeat_seconds"] == 5
    assert not welcome["resumed"]
    stun, turn = welcome["ice_servers"]
    assert stun == {"urls": ["stun:127.0.0.1:3478"]}
    expiry, name = turn["username"].split(":")
    # Until the room's end + 10 min, but never more than 2 h from now.
    now = timezone.now()
    limit = min(call.room.ends_at + dt.timedelta(minutes=10), now + dt.timedelta(hours=2))
    assert abs(int(expiry) - limit.timestamp()) < 5
    assert name == f"r{call.room.pk}u{call.expert.pk}"
    assert turn_credential("s3cret", name, dt.datetime.fromtimestamp(int(expiry), dt.UTC)) == (
        turn["username"],
        turn["credential"],
    )

    client_welcome = await client.open()
    assert client_welcome["peers"] == [
        {
            "id": call.expert.pk,
            "name": call.expert.display_name,
            "role": "expert",
            "status": "present",
        }
    ]
    joined = await expert.receive_type("peer_joined")
    assert joined["peer"] == {
        "id": call.client.pk,
        "name": call.client.display_name,
        "role": "client",
    }
    state = await expert.receive_type("room_state")
    assert state["state"] == "live"
    assert (await client.receive_type("room_state"))["state"] == "live"
    await expert.close()
    await client.close()


async def test_a_signal_reaches_only_the_participant_it_is_addressed_to(call: Call) -> None:
    expert, client = await _both_in(call)
    await expert.send(type="signal", to=call.client.pk, data=OFFER)
    relayed = await client.receive_type("signal")
    assert relayed == {"v": 1, "type": "signal", "from": call.expert.pk, "data": OFFER}

    stranger = await database_sync_to_async(UserFactory.create)()
    await client.send(type="signal", to=stranger.pk, data=OFFER)
    error = await client.receive_type("error")
    assert (error["code"], error["ref"]) == ("peer_not_here", "signal")
    await expert.close()
    await client.close()


async def test_a_signal_does_not_wait_for_the_database_thread(call: Call) -> None:
    """Every database call of a process queues on one thread: a relayed signal that hopped onto
    it (as Channels' dispatch does before every handler) waited behind other sockets'
    heartbeats and joins. Here that thread is busy for 2 s while a signal goes through."""
    expert, client = await _both_in(call)
    busy = asyncio.create_task(sync_to_async(time.sleep, thread_sensitive=True)(2))
    await asyncio.sleep(0.05)  # the sleep has the thread
    started = time.monotonic()
    await expert.send(type="signal", to=call.client.pk, data=OFFER)
    relayed = await client.receive_type("signal", timeout=1.5)
    assert time.monotonic() - started < 1
    assert relayed == {"v": 1, "type": "signal", "from": call.expert.pk, "data": OFFER}
    assert not busy.done()
    await busy
    await expert.close()
    await client.close()


async def test_a_second_connection_replaces_the_first_and_peers_see_a_resume(call: Call) -> None:
    expert, first = await _sockets(call)
    await expert.open()
    await first.open()
    await expert.receive_type("peer_joined")
    second = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    welcome = await second.open()
    assert welcome["resumed"]
    assert await first.receive_type("replaced") == {"v": 1, "type": "replaced"}
    assert await first.closed_with() == 4001
    assert (await expert.receive_type("peer_resumed"))["peer_id"] == call.client.pk
    # The new socket is the one signals reach.
    await expert.send(type="signal", to=call.client.pk, data=OFFER)
    assert (await second.receive_type("signal"))["data"] == OFFER
    open_presences = await database_sync_to_async(
        lambda: list(Presence.objects.filter(room=call.room, user=call.client, closed_at=None))
    )()
    assert len(open_presences) == 1
    await expert.close()
    await second.close()


async def test_a_drop_is_reconnecting_then_resumed_within_the_grace(call: Call) -> None:
    expert, client = await _both_in(call)
    await client.close()
    assert (await expert.receive_type("peer_reconnecting"))["peer_id"] == call.client.pk
    again = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    welcome = await again.open()
    assert welcome["resumed"]
    assert (await expert.receive_type("peer_resumed"))["peer_id"] == call.client.pk
    await expert.close()
    await again.close()


async def test_a_drop_past_the_grace_is_told_as_left(call: Call) -> None:
    expert, client = await _both_in(call)
    await client.close()
    await expert.receive_type("peer_reconnecting")
    # Within the grace the check tells nobody; after it, the peers hear the client left.
    check = database_sync_to_async(services.presence_grace_check)
    assert not await check(call.room.pk, call.client.pk)
    later = timezone.now() + dt.timedelta(seconds=21)
    assert await check(call.room.pk, call.client.pk, now=later)
    left = await expert.receive_type("peer_left")
    assert (left["peer_id"], left["reason"]) == (call.client.pk, "dropped")
    await expert.close()


async def test_leaving_tells_the_peers_at_once(call: Call) -> None:
    expert, client = await _both_in(call)
    await client.send(type="leave")
    assert await client.closed_with() == 1000
    left = await expert.receive_type("peer_left")
    assert (left["peer_id"], left["reason"]) == (call.client.pk, "left")
    await expert.close()


async def test_a_welcome_lists_a_dropped_peer_as_reconnecting(call: Call) -> None:
    expert, client = await _sockets(call)
    await client.open()
    await client.close()
    welcome = await expert.open()
    assert [(p["id"], p["status"]) for p in welcome["peers"]] == [(call.client.pk, "reconnecting")]
    await expert.close()


async def test_media_state_and_stats_are_stored(call: Call) -> None:
    expert, client = await _both_in(call)
    await client.send(
        type="media_state", peer=call.expert.pk, state="connected", candidate_type="relay"
    )
    await client.send(
        type="stats",
        peer=call.expert.pk,
        rtt_ms=42.5,
        packet_loss=0.01,
        bitrate_in_kbps=900,
        bitrate_out_kbps=850.5,
        candidate_type="relay",
    )
    await client.send(
        type="stats",
        peer=call.expert.pk,
        rtt_ms=1,
        packet_loss=0,
        bitrate_in_kbps=1,
        bitrate_out_kbps=1,
    )
    error = await client.receive_type("error")
    assert (error["code"], error["ref"]) == ("rate_limited", "stats")
    link = await database_sync_to_async(MediaLink.objects.get)(room=call.room)
    assert (link.client_id, link.reported_by_id, link.candidate_type) == (
        call.client.pk,
        call.client.pk,
        "relay",
    )
    assert link.ended_at is None
    stats = await database_sync_to_async(CallStats.objects.get)(room=call.room)
    assert (stats.reporter_id, stats.peer_id, stats.rtt_ms, stats.packet_loss) == (
        call.client.pk,
        call.expert.pk,
        42.5,
        0.01,
    )
    await client.send(type="media_state", peer=call.expert.pk, state="disconnected")
    await client.send(type="heartbeat")
    await client.receive_type("heartbeat_ack")
    await database_sync_to_async(link.refresh_from_db)()
    assert link.ended_at is not None
    await expert.close()
    await client.close()


async def test_the_expert_ends_the_call_and_everyone_hears_why_and_what_it_cost(call: Call) -> None:
    expert, client = await _both_in(call)
    await client.send(type="end")
    refused = await client.receive_type("error")
    assert (refused["code"], refused["ref"]) == ("not_allowed", "end")

    await expert.send(type="end")
    ended = await client.receive_type("ended")
    settlement = await database_sync_to_async(Settlement.objects.get)(
        payment_id=call.seat.payment_id
    )
    assert ended["reason"] == CloseReason.ENDED_BY_EXPERT
    assert ended["charge"]["amount_minor"] == settlement.amount_minor
    assert ended["charge"]["currency"] == call.room.currency
    assert await client.closed_with() == 4000
    expert_ended = await expert.receive_type("ended")
    assert (expert_ended["reason"], expert_ended["charge"]) == (CloseReason.ENDED_BY_EXPERT, None)
    assert await expert.closed_with() == 4000
    room = await database_sync_to_async(Room.objects.get)(pk=call.room.pk)
    assert (room.state, room.close_reason) == (RoomState.CLOSED, CloseReason.ENDED_BY_EXPERT)


async def test_a_swept_connection_is_closed_at_its_next_heartbeat(call: Call) -> None:
    expert, _ = await _sockets(call)
    await expert.open()
    later = timezone.now() + dt.timedelta(seconds=30)
    assert await database_sync_to_async(services.presences_sweep_stale)(later) == 1
    await expert.send(type="heartbeat")
    assert await expert.closed_with() == 4008


async def test_more_than_fifty_messages_a_second_are_dropped_with_an_error(call: Call) -> None:
    expert, _ = await _sockets(call)
    await expert.open()
    for _ in range(60):
        await expert.send_raw("[]")
    codes = [(await expert.receive())["code"] for _ in range(60)]
    # A burst of 50 is read (and refused for what it is); the rest is dropped.
    assert codes[:50] == ["not_an_object"] * 50
    assert "rate_limited" in codes[50:]
    await expert.close()


async def test_a_removed_participant_is_told_closed_and_not_admitted_again(call: Call) -> None:
    expert, client = await _both_in(call)
    remove = database_sync_to_async(services.participant_remove)
    assert await remove(call.room.pk, call.client, reason="Harassment reported by the expert")
    removed = await client.receive_type("removed")
    assert removed["reason"] == "Harassment reported by the expert"
    assert await client.closed_with() == 4002
    left = await expert.receive_type("peer_left")
    assert (left["peer_id"], left["reason"]) == (call.client.pk, "removed")
    again = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    refused = await again.open()
    assert (refused["type"], refused["code"]) == ("error", "removed")
    assert await again.closed_with() == 4424
    await expert.close()


@pytest.mark.parametrize(("seconds_left", "minutes"), [(300.5, 5), (60.5, 1)])
async def test_the_end_is_announced_five_and_one_minutes_before(
    call: Call, seconds_left: float, minutes: int
) -> None:
    ends_at = timezone.now() + dt.timedelta(seconds=seconds_left)
    # Started a minute ago: within the no-show wait, so the room is not closed on connect.
    starts_at = timezone.now() - dt.timedelta(minutes=1)
    await database_sync_to_async(Room.objects.filter(pk=call.room.pk).update)(
        starts_at=starts_at, ends_at=ends_at, blocked_from=starts_at, blocked_until=ends_at
    )
    expert, _ = await _sockets(call)
    await expert.open()
    warning = await expert.receive_type("warning", timeout=5)
    assert warning["minutes_left"] == minutes
    assert dt.datetime.fromisoformat(warning["ends_at"]) == ends_at
    assert await expert.silent()
    await expert.close()


def _unpaid(call: Call) -> Socket:
    """A client whose seat in the room is reserved but not paid."""
    other = UserFactory.create()
    Seat.objects.filter(pk=call.seat.pk).update(client=other, state=SeatState.RESERVED)
    return Socket(call.room.pk, session_cookie(other))


@pytest.mark.parametrize(
    ("who", "code", "close_code"),
    [
        ("anonymous", "login_required", 4401),
        ("stranger", "not_participant", 4403),
        ("another room's client", "not_participant", 4403),
        ("unpaid", "not_paid", 4402),
        ("closed room", "room_ended", 4410),
        ("scheduled room", "too_early", 4425),
        ("no such room", "room_not_found", 4404),
        ("foreign origin", "forbidden_origin", 4406),
    ],
)
async def test_a_socket_the_room_does_not_admit_is_refused_with_a_code_and_a_reason(
    call: Call, who: str, code: str, close_code: int
) -> None:
    def socket() -> Socket:
        room_id = call.room.pk
        if who == "anonymous":
            return Socket(room_id, None)
        if who == "stranger":
            return Socket(room_id, session_cookie(UserFactory.create()))
        if who == "another room's client":
            return Socket(room_id, session_cookie(call_create().client))
        if who == "unpaid":
            return _unpaid(call)
        if who == "closed room":
            services.room_close(room_id, reason=CloseReason.TIME_LIMIT)
        if who == "scheduled room":
            # Its lobby opens in 50 minutes (a lobby whose time has come opens itself).
            starts_at = timezone.now() + dt.timedelta(hours=1)
            ends_at = starts_at + dt.timedelta(hours=1)
            Room.objects.filter(pk=room_id).update(
                state=RoomState.SCHEDULED, opened_at=None, starts_at=starts_at, ends_at=ends_at,
                blocked_from=starts_at, blocked_until=ends_at,
            )  # fmt: skip
        if who == "no such room":
            room_id += 1000
        if who == "foreign origin":
            return Socket(
                room_id, session_cookie(call.client), origin=(b"origin", b"https://x.example")
            )
        return Socket(room_id, session_cookie(call.client))

    refused = await database_sync_to_async(socket)()
    error = await refused.open()
    assert (error["type"], error["code"]) == ("error", code)
    assert error["message"]
    assert await refused.closed_with() == close_code
    assert not await database_sync_to_async(Presence.objects.filter(room=call.room).exists)()
