"""The room follows the clock with no Celery worker running (issue 16, defect D), a sweep that
fails for one room goes on with the others (defect A), and the two room-side security
findings: a reconnect loop is rate-limited, and unpaid reservations get no TURN credentials."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging

import pytest
import time_machine
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import OperationalError
from django.test import AsyncClient, Client, override_settings
from django.urls import reverse
from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import Payment, Settlement
from rooms import services
from rooms.models import MediaLink, Offering, Presence, Room, RoomEvent, RoomState, Seat
from rooms.services import room_state
from rooms.services.presence import JoinRefused
from rooms.tests.factories import CALL_START, NOW, seat_booked
from rooms.tests.signaling import Socket, call_create, session_cookie

START = CALL_START
END = START + dt.timedelta(hours=1)
TURN = {"STUN_URLS": ["stun:127.0.0.1:3478"], "TURN_URLS": ["turn:127.0.0.1:3478"]}


def _at(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


def _room(seat: Seat) -> Room:
    return Room.objects.get(pk=seat.room_id)


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def seat(offering: Offering) -> Seat:
    return seat_booked(offering)


# --- D: a stopped worker ------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_lobby_no_sweep_opened_admits_its_client_when_its_time_has_come(seat: Seat) -> None:
    assert _room(seat).state == RoomState.SCHEDULED
    with time_machine.travel(_at(-5), tick=False):
        joined = services.presence_open(seat.room_id, seat.client, connection_id="c1")
    room = _room(seat)
    assert (room.state, room.opened_at) == (RoomState.OPEN, _at(-5))
    assert joined.presence.opened_at == _at(-5)
    # Still too early before the lobby's time.
    other = seat_booked()
    with time_machine.travel(_at(-11), tick=False), pytest.raises(JoinRefused) as refused:
        services.presence_open(other.room_id, other.client, connection_id="c2")
    assert refused.value.code == "too_early"


@pytest.mark.django_db
def test_the_room_page_and_its_state_open_a_lobby_whose_time_has_come(seat: Seat) -> None:
    with time_machine.travel(_at(-5), tick=False):
        page = _signed_in(seat.client).get(reverse("rooms:join", args=[seat.room_id]))
    assert page.status_code == 200
    assert page.context["config"]["state"] == RoomState.OPEN
    other = seat_booked()
    with time_machine.travel(_at(-5), tick=False):
        state = _signed_in(other.client).get(reverse("rooms:room_state", args=[other.room_id]))
    assert state.json()["state"] == RoomState.OPEN
    assert _room(other).state == RoomState.OPEN


def _live_call(seat: Seat) -> Room:
    """Both in from the start, media up, heartbeats that kept coming: nobody closed it."""
    room = _room(seat)
    with time_machine.travel(_at(-10), tick=False):
        services.rooms_advance()
    with time_machine.travel(_at(-1), tick=False):
        services.presence_open(room.pk, room.expert, connection_id="expert")
    with time_machine.travel(_at(0), tick=False):
        services.presence_open(room.pk, seat.client, connection_id="client")
        services.media_state_report(
            room.pk, seat.client, peer_id=room.expert_id, state="connected", candidate_type="host"
        )
    room.refresh_from_db()
    assert room.state == RoomState.LIVE
    return room


@pytest.mark.django_db
def test_a_time_limit_close_that_runs_late_ends_the_call_at_the_paid_end(seat: Seat) -> None:
    """A 60-minute session the sweep closes 30 minutes late: billed to the paid end, and the
    story says when the close ran."""
    room = _live_call(seat)
    # The heartbeats went on (the page kept the socket) until the late close.
    Presence.objects.filter(room=room).update(last_heartbeat_at=_at(89.9))
    with time_machine.travel(_at(90), tick=False):
        assert services.rooms_advance()["closed"] == 1
    room.refresh_from_db()
    assert (room.close_reason, room.closed_at) == ("time_limit", END)
    assert seat.payment_id is not None
    settlement = Settlement.objects.get(payment_id=seat.payment_id)
    assert settlement.inputs["billable_seconds"] == 3600
    closed = RoomEvent.objects.get(room=room, kind="closed")
    assert closed.data["seats"][0]["live_window"] == [[START.timestamp(), END.timestamp()]]
    assert set(Presence.objects.filter(room=room).values_list("closed_at", flat=True)) == {END}
    assert set(MediaLink.objects.filter(room=room).values_list("ended_at", flat=True)) == {END}
    assert closed.data["ran_at"] == _at(90).isoformat()


@pytest.mark.django_db
def test_nothing_is_served_after_the_paid_end(seat: Seat) -> None:
    room = _live_call(seat)
    with time_machine.travel(END - dt.timedelta(seconds=1), tick=False):
        assert services.presences_heartbeat({"client": timezone.now()}).alive == {"client"}
    with time_machine.travel(END + dt.timedelta(seconds=1), tick=False):
        assert services.presences_heartbeat({"client": timezone.now()}).gone == {"client"}
        with pytest.raises(JoinRefused) as refused:
            services.presence_open(room.pk, seat.client, connection_id="late")
    assert refused.value.code == "room_ended"
    # Admission closed the room on its way (as the sweep would have).
    room.refresh_from_db()
    assert (room.state, room.close_reason, room.closed_at) == (RoomState.CLOSED, "time_limit", END)


@pytest.mark.django_db(transaction=True)
async def test_a_socket_is_ended_at_the_paid_end_without_any_worker() -> None:
    call = await database_sync_to_async(call_create)()
    ends_at = timezone.now() + dt.timedelta(seconds=2)
    await Room.objects.filter(pk=call.room.pk).aupdate(ends_at=ends_at, blocked_until=ends_at)
    expert = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.expert))
    client = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    await expert.open()
    await client.open()
    for socket in (expert, client):
        ended = await socket.receive_type("ended", timeout=6)
        assert ended["reason"] == "time_limit"
        assert await socket.closed_with() == 4000
    room = await Room.objects.aget(pk=call.room.pk)
    assert (room.state, room.close_reason, room.closed_at) == ("closed", "time_limit", ends_at)
    assert not await Presence.objects.filter(room=room, closed_at__isnull=True).aexists()


# --- A: one room's failure does not stop the sweep --------------------------------------------


@pytest.mark.django_db
def test_a_room_whose_close_fails_does_not_stop_the_sweep_for_the_others(
    offering: Offering, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken, fine = seat_booked(offering), seat_booked()
    with time_machine.travel(_at(-10), tick=False):
        services.rooms_advance()
    real = room_state._seats_to_settle

    def seats_to_settle(room: Room, payments: dict[int, Payment]) -> list[Seat]:
        if room.pk == broken.room_id:
            raise RuntimeError("a bug in one room")
        return real(room, payments)

    monkeypatch.setattr(room_state, "_seats_to_settle", seats_to_settle)
    with (
        time_machine.travel(_at(10), tick=False),
        caplog.at_level(logging.ERROR, logger="rooms.services.room_state"),
    ):
        done = services.rooms_advance()
    assert (done["closed"], done["failed"]) == (1, 1)
    assert _room(fine).state == RoomState.CLOSED
    assert _room(broken).state == RoomState.OPEN  # rolled back, tried again next tick
    assert f"Closing room {broken.room_id}" in caplog.text
    monkeypatch.setattr(room_state, "_seats_to_settle", real)
    with time_machine.travel(_at(10.2), tick=False):
        assert services.rooms_advance()["closed"] == 1
    assert _room(broken).state == RoomState.CLOSED


# --- Security: a reconnect loop ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_participant_reconnecting_in_a_loop_is_refused_and_peers_hear_nothing(
    seat: Seat,
) -> None:
    room = _live_call(seat)
    events = RoomEvent.objects.filter(room=room, kind="presence_opened")
    before = events.count()
    at = _at(5)
    Presence.objects.filter(room=room).update(last_heartbeat_at=at)
    for n in range(settings.SIGNALING_JOINS_MAX):
        with time_machine.travel(at + dt.timedelta(milliseconds=100 * n), tick=False):
            services.presence_open(room.pk, seat.client, connection_id=f"loop-{n}")
    with (
        time_machine.travel(at + dt.timedelta(seconds=1), tick=False),
        pytest.raises(JoinRefused) as refused,
    ):
        services.presence_open(room.pk, seat.client, connection_id="one-too-many")
    assert refused.value.code == "too_many_joins"
    assert "try again in 10 s" in str(refused.value)
    # The refused connect replaced nothing and told no peer anything.
    assert events.count() == before + settings.SIGNALING_JOINS_MAX
    assert Presence.objects.get(
        room=room, user=seat.client, closed_at__isnull=True
    ).connection_id == (f"loop-{settings.SIGNALING_JOINS_MAX - 1}")
    # The window passes: admitted again.
    with time_machine.travel(at + dt.timedelta(seconds=11), tick=False):
        services.presence_open(room.pk, seat.client, connection_id="later")


@pytest.mark.django_db(transaction=True)
@override_settings(SIGNALING_JOINS_MAX=2)
async def test_a_socket_over_the_join_limit_is_refused_with_4429() -> None:
    call = await database_sync_to_async(call_create)()
    cookie = await database_sync_to_async(session_cookie)(call.client)
    for _ in range(2):
        socket = Socket(call.room.pk, cookie)
        assert (await socket.open())["type"] == "welcome"
    refused = Socket(call.room.pk, cookie)
    error = await refused.open()
    assert (error["type"], error["code"]) == ("error", "too_many_joins")
    assert await refused.closed_with() == 4429


# --- Security: TURN credentials only for those who paid -----------------------------------------


@pytest.mark.django_db
@override_settings(**TURN, TURN_SECRET="s3cret")
def test_an_unpaid_reservation_gets_no_turn_credentials_on_the_room_page(
    offering: Offering,
) -> None:
    with time_machine.travel(NOW, tick=False):
        unpaid = services.booking_reserve(UserFactory.create(), offering, START)
    Seat.objects.filter(pk=unpaid.pk).update(reserved_until=END)  # still holding its place
    with time_machine.travel(_at(-30), tick=False):
        page = _signed_in(unpaid.client).get(reverse("rooms:join", args=[unpaid.room_id]))
        expert_page = _signed_in(offering.expert).get(reverse("rooms:join", args=[unpaid.room_id]))
    assert page.status_code == 200
    config = page.context["config"]
    assert config["seatPaid"] is False
    assert not any("credential" in server for server in config["iceServers"])
    assert b"s3cret" not in page.content
    # The expert (and a client who paid) still get theirs.
    assert any("credential" in server for server in expert_page.context["config"]["iceServers"])


@pytest.mark.django_db(transaction=True)
@override_settings(**TURN, TURN_SECRET="s3cret")
async def test_an_unpaid_reservation_cannot_run_the_connectivity_test(offering: Offering) -> None:
    def reserve() -> Seat:
        with time_machine.travel(NOW, tick=False):
            seat = services.booking_reserve(UserFactory.create(), offering, START)
        # Still holding its place now (the test runs on the real clock).
        Seat.objects.filter(pk=seat.pk).update(
            reserved_until=timezone.now() + dt.timedelta(hours=1)
        )
        return seat

    unpaid = await sync_to_async(reserve)()
    client = AsyncClient()
    await client.aforce_login(await User.objects.aget(pk=unpaid.client_id))
    offer = json.dumps({"type": "offer", "sdp": "v=0\r\n"})
    url = reverse("rooms:probe", args=[unpaid.room_id])
    response = await client.post(url, offer, content_type="application/json")
    assert response.status_code == 403
    assert "paid" in response.json()["error"]
    await asyncio.sleep(0)


# --- A: an unexpected failure is answered, not a 1011 --------------------------------------------


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        # A bug: answered, the socket stays.
        (RuntimeError("a bug"), "server_error"),
        # PostgreSQL restarting: the page sends the report again when told so, with its own
        # time, instead of counting it delivered at the next heartbeat's ack.
        (OperationalError("terminating connection due to administrator command"), "unavailable"),
    ],
)
@pytest.mark.django_db(transaction=True)
async def test_an_unexpected_failure_of_a_message_is_answered_with_its_type_and_the_socket_stays(
    monkeypatch: pytest.MonkeyPatch, failure: Exception, code: str
) -> None:
    call = await database_sync_to_async(call_create)()
    expert = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.expert))
    client = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    await expert.open()
    await client.open()

    def broken(*args: object, **kwargs: object) -> None:
        raise failure

    monkeypatch.setattr(services, "media_state_report", broken)
    await client.send(
        type="media_state", peer=call.expert.pk, state="connected", candidate_type="host"
    )
    error = await client.receive_type("error")
    assert (error["code"], error["ref"]) == (code, "media_state")
    await client.send(type="heartbeat")
    assert (await client.receive_type("heartbeat_ack"))["type"] == "heartbeat_ack"
    await client.close()
    await expert.close()
