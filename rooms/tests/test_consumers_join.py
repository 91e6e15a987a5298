"""A socket opened before Join (`?join=later`, docs/SIGNALING.md, Connecting): the room page
opens it on the preflight so that the click costs one `join` message. Until that message the
socket is authenticated and nothing else: no presence, no event, no peer hears of it, the room
does not go live; from the join on it is exactly a socket admitted at connect (refusals,
replacement of an older connection, resume). One that never joins is closed after a bounded
wait and leaves nothing behind."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from django.test import override_settings
from django.utils import timezone

from accounts.tests.factories import UserFactory
from rooms import broadcast, consumers, services
from rooms.models import CloseReason, Presence, Room, RoomEvent, RoomState, Seat, SeatState
from rooms.tests.signaling import Call, Socket, call_create, session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

OFFER = {"description": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}}


@pytest.fixture
def call() -> Iterator[Call]:
    yield call_create()


async def _socket(call: Call, who: str, *, join_later: bool = False) -> Socket:
    user = call.expert if who == "expert" else call.client
    cookie = await database_sync_to_async(session_cookie)(user)
    return Socket(call.room.pk, cookie, join_later=join_later)


def _room_record(call: Call) -> dict[str, Any]:
    """What the database says about the room's people: its presences, its events, its state."""
    room = Room.objects.get(pk=call.room.pk)
    return {
        "presences": sorted(
            Presence.objects.filter(room=room).values_list("user_id", "closed_at", "close_reason")
        ),
        "events": RoomEvent.objects.filter(room=room).count(),
        "state": room.state,
        "live_at": room.live_at,
    }


room_record = database_sync_to_async(_room_record)


async def test_a_socket_opened_before_join_is_in_nothing_until_it_joins(call: Call) -> None:
    expert = await _socket(call, "expert")
    await expert.open()
    before = await room_record(call)

    client = await _socket(call, "client", join_later=True)
    ready = await client.open()
    assert ready == {"v": 1, "type": "ready", "join_within_seconds": 120}
    # Authenticated, and nothing more: the database and the expert know nothing of it.
    assert await room_record(call) == before
    assert before["state"] == RoomState.OPEN
    assert await expert.silent()
    # Nor does it hear the room: a signal to the client reaches no socket yet.
    await expert.send(type="signal", to=call.client.pk, data=OFFER)
    assert (await expert.receive_type("error"))["code"] == "peer_not_here"
    assert await client.silent()

    await client.send(type="join")
    welcome = await client.receive()
    assert welcome["type"] == "welcome"
    assert [peer["id"] for peer in welcome["peers"]] == [call.expert.pk]
    assert not welcome["resumed"]
    assert (await expert.receive_type("peer_joined"))["peer"]["id"] == call.client.pk
    assert (await expert.receive_type("room_state"))["state"] == "live"
    # The joining socket hears the room's news after its welcome, as one admitted at connect.
    assert (await client.receive())["type"] == "room_state"
    after = await room_record(call)
    assert after["state"] == RoomState.LIVE
    assert [(user, closed) for user, closed, _ in after["presences"]] == [
        (call.expert.pk, None),
        (call.client.pk, None),
    ]
    # From the join on it is a socket in the call.
    await expert.send(type="signal", to=call.client.pk, data=OFFER)
    assert (await client.receive_type("signal"))["data"] == OFFER
    await client.send(type="heartbeat")
    assert (await client.receive())["type"] == "heartbeat_ack"
    await expert.close()
    await client.close()


async def test_messages_before_join_are_refused_and_the_socket_can_still_join(call: Call) -> None:
    expert = await _socket(call, "expert")
    await expert.open()
    client = await _socket(call, "client", join_later=True)
    await client.open()
    for kind, fields in [
        ("heartbeat", {}),
        ("signal", {"to": call.expert.pk, "data": OFFER}),
        ("media_state", {"peer": call.expert.pk, "state": "connected"}),
        ("leave", {}),
        ("end", {}),
    ]:
        await client.send(type=kind, **fields)
        error = await client.receive()
        assert (error["type"], error["code"], error["ref"]) == ("error", "not_joined", kind)
        assert "send join first" in error["message"]
    # A malformed join is told what is wrong, and changes nothing either.
    await client.send_raw('{"type": "join"}')
    assert (await client.receive())["code"] == "bad_version"
    assert await expert.silent()
    assert not await database_sync_to_async(
        Presence.objects.filter(room=call.room, user=call.client).exists
    )()

    await client.send(type="join")
    assert (await client.receive())["type"] == "welcome"
    assert (await expert.receive_type("peer_joined"))["peer"]["id"] == call.client.pk
    await expert.close()
    await client.close()


async def test_a_second_join_is_refused_and_changes_nothing(call: Call) -> None:
    expert = await _socket(call, "expert")
    await expert.open()
    client = await _socket(call, "client", join_later=True)
    await client.open()
    await client.send(type="join")
    assert (await client.receive())["type"] == "welcome"
    await expert.receive_type("room_state")
    joined = await room_record(call)

    await client.send(type="join")
    error = await client.receive_type("error")
    assert (error["code"], error["ref"]) == ("already_joined", "join")
    # A socket admitted at connect has joined already, too.
    await expert.send(type="join")
    assert (await expert.receive_type("error"))["code"] == "already_joined"
    assert await room_record(call) == joined
    assert await expert.silent()
    # Still in the call.
    await client.send(type="heartbeat")
    assert (await client.receive_type("heartbeat_ack"))["type"] == "heartbeat_ack"
    await expert.close()
    await client.close()


@override_settings(SIGNALING_JOIN_WAIT_SECONDS=1)
async def test_a_socket_that_never_joins_is_closed_and_leaves_nothing_behind(call: Call) -> None:
    expert = await _socket(call, "expert")
    await expert.open()
    before = await room_record(call)
    client = await _socket(call, "client", join_later=True)
    assert (await client.open())["join_within_seconds"] == 1
    error = await client.receive(timeout=3)
    assert (error["type"], error["code"]) == ("error", "join_timeout")
    assert error["message"]
    assert await client.closed_with() == 4408
    assert await room_record(call) == before
    assert await expert.silent()
    # The room goes on without it: the client's next socket joins as a first join.
    again = await _socket(call, "client")
    welcome = await again.open()
    assert welcome["type"] == "welcome"
    assert not welcome["resumed"]
    assert (await expert.receive_type("peer_joined"))["peer"]["id"] == call.client.pk
    await expert.close()
    await again.close()


@override_settings(SIGNALING_JOIN_WAIT_SECONDS=1)
async def test_a_socket_that_joined_is_not_closed_by_the_wait(call: Call) -> None:
    client = await _socket(call, "client", join_later=True)
    await client.open()
    await client.send(type="join")
    assert (await client.receive())["type"] == "welcome"
    assert await client.communicator.receive_nothing(timeout=1.5)
    await client.send(type="heartbeat")
    assert (await client.receive())["type"] == "heartbeat_ack"
    await client.close()


async def test_a_socket_closed_before_join_leaves_nothing_behind(call: Call) -> None:
    expert = await _socket(call, "expert")
    await expert.open()
    before = await room_record(call)
    client = await _socket(call, "client", join_later=True)
    await client.open()
    await client.close()
    assert await expert.silent()
    assert await room_record(call) == before
    await expert.close()


async def test_a_socket_waiting_for_join_does_not_replace_the_one_in_the_call(call: Call) -> None:
    """The same person opens the room in a second tab: it waits on its preflight without
    touching the first tab's call; its join replaces the first as a reload does (a resume)."""
    expert = await _socket(call, "expert")
    await expert.open()
    first = await _socket(call, "client")
    await first.open()
    await expert.receive_type("room_state")
    await first.receive_type("room_state")
    in_call = await room_record(call)

    second = await _socket(call, "client", join_later=True)
    assert (await second.open())["type"] == "ready"
    assert await first.silent()
    assert await expert.silent()
    assert await room_record(call) == in_call
    # The first tab is still the one its peer's signals reach.
    await expert.send(type="signal", to=call.client.pk, data=OFFER)
    assert (await first.receive_type("signal"))["data"] == OFFER
    assert await second.silent()

    await second.send(type="join")
    welcome = await second.receive()
    assert (welcome["type"], welcome["resumed"]) == ("welcome", True)
    assert await first.receive_type("replaced") == {"v": 1, "type": "replaced"}
    assert await first.closed_with() == 4001
    assert (await expert.receive_type("peer_resumed"))["peer_id"] == call.client.pk
    open_presences = await database_sync_to_async(
        lambda: list(Presence.objects.filter(room=call.room, user=call.client, closed_at=None))
    )()
    assert len(open_presences) == 1
    await expert.close()
    await second.close()


async def test_a_drop_then_a_join_within_the_grace_is_a_resume(call: Call) -> None:
    expert = await _socket(call, "expert")
    await expert.open()
    client = await _socket(call, "client")
    await client.open()
    await expert.receive_type("room_state")
    await client.close()  # dropped
    assert (await expert.receive_type("peer_reconnecting"))["peer_id"] == call.client.pk

    back = await _socket(call, "client", join_later=True)
    await back.open()
    assert await expert.silent()  # waiting on the preflight is not coming back
    await back.send(type="join")
    welcome = await back.receive()
    assert (welcome["type"], welcome["resumed"]) == ("welcome", True)
    assert (await expert.receive_type("peer_resumed"))["peer_id"] == call.client.pk
    await expert.close()
    await back.close()


def _unpaid(call: Call) -> Socket:
    other = UserFactory.create()
    Seat.objects.filter(pk=call.seat.pk).update(client=other, state=SeatState.RESERVED)
    return Socket(call.room.pk, session_cookie(other), join_later=True)


@pytest.mark.parametrize(
    ("who", "code", "close_code"),
    [
        ("stranger", "not_participant", 4403),
        ("unpaid", "not_paid", 4402),
        ("closed room", "room_ended", 4410),
        ("scheduled room", "too_early", 4425),
        ("no such room", "room_not_found", 4404),
    ],
)
async def test_a_join_the_room_does_not_admit_is_refused_with_its_code(
    call: Call, who: str, code: str, close_code: int
) -> None:
    """Waiting needs only a login; admission is decided at the join, with the same refusals
    and close codes as a socket admitted at connect."""

    def socket() -> Socket:
        room_id = call.room.pk
        if who == "stranger":
            return Socket(room_id, session_cookie(UserFactory.create()), join_later=True)
        if who == "unpaid":
            return _unpaid(call)
        if who == "closed room":
            services.room_close(room_id, reason=CloseReason.TIME_LIMIT)
        if who == "scheduled room":
            starts_at = timezone.now() + dt.timedelta(hours=1)
            ends_at = starts_at + dt.timedelta(hours=1)
            Room.objects.filter(pk=room_id).update(
                state=RoomState.SCHEDULED, opened_at=None, starts_at=starts_at, ends_at=ends_at,
                blocked_from=starts_at, blocked_until=ends_at,
            )  # fmt: skip
        if who == "no such room":
            room_id += 1000
        return Socket(room_id, session_cookie(call.client), join_later=True)

    refused = await database_sync_to_async(socket)()
    assert (await refused.open())["type"] == "ready"
    await refused.send(type="join")
    error = await refused.receive()
    assert (error["type"], error["code"], error["ref"]) == ("error", code, None)
    assert error["message"]
    assert await refused.closed_with() == close_code
    assert not await database_sync_to_async(Presence.objects.filter(room=call.room).exists)()


async def test_a_socket_without_a_login_is_refused_before_it_can_wait(call: Call) -> None:
    anonymous = Socket(call.room.pk, None, join_later=True)
    error = await anonymous.open()
    assert (error["type"], error["code"]) == ("error", "login_required")
    assert await anonymous.closed_with() == 4401


@override_settings(SIGNALING_WAITING_PER_USER=2)
async def test_an_account_has_only_so_many_sockets_waiting_and_each_place_comes_back(
    call: Call,
) -> None:
    waiting = [await _socket(call, "client", join_later=True) for _ in range(2)]
    for socket in waiting:
        assert (await socket.open())["type"] == "ready"
    refused = await _socket(call, "client", join_later=True)
    error = await refused.open()
    assert (error["type"], error["code"]) == ("error", "too_many_waiting")
    assert "At most 2" in error["message"]
    assert await refused.closed_with() == 4429
    # Another account, and a socket admitted at connect, are not counted.
    other = await _socket(call, "expert", join_later=True)
    assert (await other.open())["type"] == "ready"
    admitted = await _socket(call, "client")
    assert (await admitted.open())["type"] == "welcome"
    await admitted.close()
    # A place comes back when a waiting socket closes, and when one joins.
    await waiting[0].close()
    again = await _socket(call, "client", join_later=True)
    assert (await again.open())["type"] == "ready"
    await waiting[1].send(type="join")
    assert (await waiting[1].receive())["type"] == "welcome"
    last = await _socket(call, "client", join_later=True)
    assert (await last.open())["type"] == "ready"
    for socket in (waiting[1], other, again, last):
        await socket.close()
    assert call.client.pk not in consumers.waiting_by_user
    assert call.expert.pk not in consumers.waiting_by_user


@override_settings(SIGNALING_WAITING_PER_USER=1, SIGNALING_JOIN_WAIT_SECONDS=1)
async def test_a_socket_whose_wait_ended_gives_its_place_back(call: Call) -> None:
    first = await _socket(call, "client", join_later=True)
    await first.open()
    assert await first.closed_with() == 4408
    second = await _socket(call, "client", join_later=True)
    assert (await second.open())["type"] == "ready"
    await second.close()


def test_held_news_is_sent_at_once_when_the_block_fails(monkeypatch: Any) -> None:
    """A join refused after something committed (the catch-up closed the room on the way)
    still tells the sockets: what the block held goes out as the block fails."""
    sent: list[list[tuple[str, dict[str, Any]]]] = []
    monkeypatch.setattr(broadcast, "_send", sent.append)
    with pytest.raises(services.JoinRefused), broadcast.held() as news:
        broadcast._group_send("room.1", {"type": "room.event"})
        raise services.JoinRefused("room_ended", "closed")
    assert sent == [[("room.1", {"type": "room.event"})]]
    assert news == [("room.1", {"type": "room.event"})]

    sent.clear()
    with broadcast.held() as news:
        broadcast._group_send("room.1", {"type": "room.event"})
    assert sent == []  # handed to the caller instead
    assert news == [("room.1", {"type": "room.event"})]
