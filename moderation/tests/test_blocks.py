"""A block before the pair meets: their sessions together are canceled with nothing charged,
so nobody is priced as a no-show for a session they were kept out of. Blocking and unblocking
each leave an audit row staff can read."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from billing.models import Settlement
from moderation import services
from moderation.models import BlockEvent, BlockEventKind
from rooms import services as rooms
from rooms.errors import BookingRefused
from rooms.models import Offering, Presence, Room, RoomEvent, RoomState, Seat, SeatState
from rooms.tests.factories import CALL_START, NOW, seat_booked

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("blocker", ["client", "expert"])
def test_a_block_cancels_the_pairs_booked_session_free(blocker: str) -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    who, other = (seat.client, room.expert) if blocker == "client" else (room.expert, seat.client)
    with time_machine.travel(NOW + dt.timedelta(hours=1), tick=False):
        services.block_create(who, other.pk)
    seat.refresh_from_db()
    room.refresh_from_db()
    assert (seat.state, room.state) == (SeatState.CANCELED, RoomState.CANCELED)
    assert Settlement.objects.get(payment__seat=seat).amount_minor == 0
    assert RoomEvent.objects.filter(room=room, kind="pair_blocked").count() == 1
    with (
        time_machine.travel(NOW + dt.timedelta(hours=1), tick=False),
        pytest.raises(BookingRefused),
    ):
        offering = Offering.objects.get(rooms=room)
        rooms.booking_reserve(seat.client, offering, CALL_START + dt.timedelta(days=1))


def test_a_block_in_the_lobby_before_they_met_cancels_free_and_empties_the_lobby() -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(CALL_START + dt.timedelta(minutes=2), tick=False):
        rooms.rooms_advance()
        rooms.presence_open(room.pk, room.expert, connection_id="expert-waiting")
        services.block_create(room.expert, seat.client_id)
    room.refresh_from_db()
    assert room.state == RoomState.CANCELED  # not closed as a client no-show
    assert Settlement.objects.get(payment__seat=seat).amount_minor == 0
    assert not Presence.objects.filter(room=room, closed_at__isnull=True).exists()


def test_blocking_twice_changes_nothing_more() -> None:
    seat = seat_booked()
    with time_machine.travel(NOW, tick=False):
        services.block_create(seat.client, seat.room.expert_id)
        services.block_create(seat.client, seat.room.expert_id)
    assert Seat.objects.get(pk=seat.pk).state == SeatState.CANCELED
    assert RoomEvent.objects.filter(kind="pair_blocked").count() == 1


def _block_log() -> list[tuple[object, ...]]:
    return list(
        BlockEvent.objects.order_by("pk").values_list("blocker", "blocked", "kind", "reason")
    )


def test_blocking_and_unblocking_each_write_their_audit_row() -> None:
    me, them = UserFactory.create(), UserFactory.create()
    services.block_create(me, them.pk, reason="Rude in chat")
    services.block_create(me, them.pk, reason="Again")  # already blocked: nothing new
    assert _block_log() == [(me.pk, them.pk, BlockEventKind.CREATED, "Rude in chat")]

    assert services.block_remove(me, them.pk)
    assert not services.block_remove(me, them.pk)  # nothing to lift: nothing logged
    assert _block_log() == [
        (me.pk, them.pk, BlockEventKind.CREATED, "Rude in chat"),
        (me.pk, them.pk, BlockEventKind.REMOVED, ""),
    ]


def test_a_refused_block_writes_no_audit_row() -> None:
    me = UserFactory.create()
    with pytest.raises(services.ModerationError, match="cannot block yourself"):
        services.block_create(me, me.pk)
    assert _block_log() == []


def test_the_block_log_is_read_only_in_admin() -> None:
    me, them = UserFactory.create(), UserFactory.create()
    services.block_create(me, them.pk, reason="Spam")
    services.block_remove(me, them.pk)
    staff = StaffFactory.create()
    desk = Client()
    login_with_mfa(desk, staff, totp_enable(staff))
    listing = desk.get(reverse("admin:moderation_blockevent_changelist")).content.decode()
    assert listing.count(me.email) == 2
    assert "Unblocked" in listing
    assert desk.get(reverse("admin:moderation_blockevent_add")).status_code == 403
