"""The room page's server side: the page and its config, the state a lobby polls, the summary
after the close, and who may run a connectivity test. (The page itself runs in Chromium:
rooms/tests/browser/.)"""

from __future__ import annotations

import datetime as dt
import json

import pytest
import time_machine
from asgiref.sync import sync_to_async
from django.test import AsyncClient, Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import UserFactory
from rooms import services
from rooms.models import Offering, Rating, RoomEvent, Seat
from rooms.tests.factories import CALL_START, room_closed_after_a_call, seat_booked

START = CALL_START

pytestmark = pytest.mark.django_db


def _at(minutes: float) -> dt.datetime:
    return START + dt.timedelta(minutes=minutes)


@pytest.fixture
def seat(offering: Offering) -> Seat:
    return seat_booked(offering)


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_page_carries_what_the_lobby_needs(seat: Seat) -> None:
    with time_machine.travel(_at(-30), tick=False):
        response = _signed_in(seat.client).get(reverse("rooms:join", args=[seat.room_id]))
    assert response.status_code == 200
    config = response.context["config"]
    assert config["role"] == "client"
    assert config["state"] == "scheduled"
    assert config["lobbyOpensAt"] == _at(-10).isoformat()
    assert config["seatPaid"] is True
    assert config["socketPath"] == f"/ws/rooms/{seat.room_id}/"
    assert b'id="room-config"' in response.content
    assert b'data-phase="lobby"' in response.content


def test_the_lobby_polls_the_state_as_json(seat: Seat) -> None:
    with time_machine.travel(_at(-5), tick=False):
        services.rooms_advance()
        response = _signed_in(seat.client).get(reverse("rooms:room_state", args=[seat.room_id]))
    assert response.status_code == 200
    assert response.json()["state"] == "open"


def test_a_stranger_gets_the_refusal_for_the_state_and_the_summary(seat: Seat) -> None:
    stranger = _signed_in(UserFactory.create())
    for name in ("rooms:join", "rooms:room_state", "rooms:room_summary"):
        response = stranger.get(reverse(name, args=[seat.room_id]))
        assert response.status_code == 403
        assert b"for the expert and the clients booked" in response.content


def test_the_client_sees_their_charge_and_how_it_was_priced(seat: Seat) -> None:
    room_closed_after_a_call(seat)
    assert seat.payment_id is not None
    response = _signed_in(seat.client).get(reverse("rooms:room_summary", args=[seat.room_id]))
    body = response.content.decode()
    # A 60-minute private session's default price is a fixed price (OfferingFactory).
    amount = seat.room.max_amount_minor
    assert f'id="charge" data-amount-minor="{amount}"' in body
    assert "The expert ended the session." in body
    assert "150 s connected" in body
    assert 'id="dispute-path"' in body


def test_the_expert_sees_what_clients_paid_and_their_payout(seat: Seat) -> None:
    room_closed_after_a_call(seat)
    response = _signed_in(seat.room.expert).get(reverse("rooms:join", args=[seat.room_id]))
    body = response.content.decode()
    amount = seat.room.max_amount_minor
    assert f'id="charge" data-amount-minor="{amount}"' in body
    assert f'id="payout" data-amount-minor="{amount * 85 // 100}"' in body
    assert 'data-phase="ended"' in body
    assert seat.client.display_name in body


@pytest.mark.django_db(transaction=True)
async def test_the_connectivity_test_is_for_participants_only(seat: Seat) -> None:
    url = reverse("rooms:probe", args=[seat.room_id])
    offer = json.dumps({"type": "offer", "sdp": "v=0\r\n"})
    anonymous = await AsyncClient().post(url, offer, content_type="application/json")
    assert anonymous.status_code == 401
    stranger = AsyncClient()
    await stranger.aforce_login(await sync_to_async(UserFactory.create)())
    refused = await stranger.post(url, offer, content_type="application/json")
    assert refused.status_code == 403
    assert "for the expert and the clients booked" in refused.json()["error"]


@pytest.mark.django_db(transaction=True)
async def test_the_connectivity_test_refuses_a_malformed_offer(seat: Seat) -> None:
    client = AsyncClient()
    await client.aforce_login(await User.objects.aget(pk=seat.client_id))
    url = reverse("rooms:probe", args=[seat.room_id])
    response = await client.post(url, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]


def test_a_client_rates_the_session_once_and_may_change_it(seat: Seat) -> None:
    room = room_closed_after_a_call(seat)
    client = _signed_in(seat.client)
    url = reverse("rooms:room_rate", args=[room.pk])
    assert client.post(url, {"stars": "4", "comment": " Clear advice. "}).status_code == 302
    client.post(url, {"stars": "5"})
    rating = Rating.objects.get()
    assert (rating.stars, rating.comment, rating.expert_id) == (5, "", room.expert_id)
    assert RoomEvent.objects.filter(room=room, kind="rated").count() == 2


def test_a_rating_out_of_range_or_before_the_end_is_refused(seat: Seat) -> None:
    client = _signed_in(seat.client)
    url = reverse("rooms:room_rate", args=[seat.room_id])
    response = client.post(url, {"stars": "5"}, follow=True)
    assert "once it has ended" in response.content.decode()
    room_closed_after_a_call(seat)
    response = client.post(url, {"stars": "9"}, follow=True)
    assert "one to five stars" in response.content.decode()
    assert not Rating.objects.exists()
