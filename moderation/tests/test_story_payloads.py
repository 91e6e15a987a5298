"""The room's story reads each record's JSON once, into typed values: old or malformed data
still tells its story, in the generic words, and never breaks the page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import StaffFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from billing.models import PaymentEvent
from moderation.story import room_story
from moderation.story.payloads import Money, Text, UserRef, payload_parse
from rooms.models import Room, RoomEvent
from rooms.tests.factories import CALL_START, seat_booked

pytestmark = pytest.mark.django_db


def test_a_payload_is_typed_by_its_keys_and_a_wrong_shape_reads_as_absent() -> None:
    data = payload_parse(
        {"seat": "3", "dispute": "du_1", "command": 7, "user": 5, "fee_minor": 150, "ran_at": 12}
    )
    assert (data.seat, data.dispute, data.command, data.user, data.ran_at) == (
        None,
        "du_1",
        7,
        5,
        None,
    )
    assert data.value("fee_minor") == Money(150)
    assert data.value("user") == UserRef(5)
    # Kept as a fact all the same, in plain words.
    assert data.value("seat") == Text("3")
    assert payload_parse(["not", "an", "object"]).items == (
        ("data", Text("['not', 'an', 'object']")),
    )


def test_a_story_with_malformed_event_data_still_renders_every_record() -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    at = CALL_START + dt.timedelta(minutes=1)
    for kind, data in [
        ("closed", {"reason": "nope", "seats": ["x", 3, {"client": "b"}], "ran_at": 5}),
        ("closed", {"seats": "x"}),
        ("state_changed", {"old": [1], "new": {"a": 1}}),
        ("presence_opened", {"connection": ["x"]}),
        ("rated", {"stars": "many"}),
        ("pair_blocked", {"blocked": "nobody"}),
        ("booked", {"starts_at": 12, "seat": "s"}),
    ]:
        RoomEvent.objects.create(room=room, kind=kind, data=data, created_at=at)
    assert seat.payment_id is not None
    PaymentEvent.objects.create(
        payment_id=seat.payment_id, kind="refund_decided", data=[1], created_at=at
    )

    titles = [entry.title for entry in room_story(room.pk).entries]
    assert titles.count("Room closed") == 2
    assert "Room: — → —" in titles
    assert "Rated the session many★" in titles
    assert "Blocked user #nobody" in titles
    assert "Booked by the client for 12" in titles
    assert "Refund of — decided" in titles

    staff = StaffFactory.create()
    client = Client()
    login_with_mfa(client, staff, totp_enable(staff))
    page = client.get(reverse("admin:rooms_room_story", args=[room.pk]))
    assert page.status_code == 200
    assert "Seat of user #?" in page.content.decode()
