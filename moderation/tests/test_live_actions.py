"""Staff's live actions — end a room, remove a participant, ban a user — through the services
and through the admin desk, with who may do them and what each writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts.models import OutboundEmail, User
from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from billing.models import Settlement
from moderation import services
from moderation.models import StaffAction, StaffActionKind
from rooms import services as rooms
from rooms.models import Presence, Room, RoomEvent, RoomState, Seat
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    seat_booked,
    seat_pay,
    weekdays_available,
)

pytestmark = pytest.mark.django_db

IN_THE_CALL = CALL_START + dt.timedelta(minutes=2)


@pytest.fixture
def live_seat() -> Iterator[Seat]:
    """A private session in progress: the expert and the client both connected since the start."""
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(CALL_START - dt.timedelta(minutes=1), tick=False):
        rooms.rooms_advance()
    with time_machine.travel(CALL_START, tick=False):
        rooms.presence_open(room.pk, room.expert, connection_id="expert-socket")
        rooms.presence_open(room.pk, seat.client, connection_id="client-socket")
    with time_machine.travel(IN_THE_CALL, tick=False):
        yield seat


@pytest.fixture
def staff() -> User:
    return StaffFactory.create(is_superuser=True)


def _inside(room_id: int) -> set[int]:
    return set(
        Presence.objects.filter(room_id=room_id, closed_at__isnull=True).values_list(
            "user_id", flat=True
        )
    )


def test_staff_remove_a_participant_who_cannot_come_back(live_seat: Seat, staff: User) -> None:
    room = live_seat.room
    assert services.staff_participant_remove(
        room.pk, live_seat.client_id, actor=staff, reason="abusive language"
    )
    assert _inside(room.pk) == {room.expert_id}
    action = StaffAction.objects.get()
    assert (action.kind, action.actor, action.subject_id, action.room_id, action.reason) == (
        StaffActionKind.PARTICIPANT_REMOVE,
        staff,
        live_seat.client_id,
        room.pk,
        "abusive language",
    )
    assert RoomEvent.objects.filter(room=room, kind="participant_removed", actor=staff).exists()
    with pytest.raises(rooms.JoinRefused) as refused:
        rooms.presence_open(room.pk, live_seat.client, connection_id="again")
    assert refused.value.code == "removed"


def test_staff_end_a_room_and_it_settles_like_any_close(live_seat: Seat, staff: User) -> None:
    room = services.staff_room_end(live_seat.room_id, actor=staff, reason="reported fraud")
    assert (room.state, room.close_reason) == (RoomState.CLOSED, "terminated_by_staff")
    assert _inside(room.pk) == set()
    assert StaffAction.objects.get().kind == StaffActionKind.ROOM_END
    assert Settlement.objects.get(payment__seat=live_seat).rule


def test_staff_ending_a_lobby_nobody_met_in_cancels_it_and_charges_nothing(staff: User) -> None:
    """The expert waits in the lobby, the client has not come: closing it would price the
    client as a no-show, so staff's end cancels it instead, the client released in full."""
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(CALL_START - dt.timedelta(minutes=1), tick=False):
        rooms.rooms_advance()
        rooms.presence_open(room.pk, room.expert, connection_id="expert-socket")
    with time_machine.travel(IN_THE_CALL, tick=False):
        ended = services.staff_room_end(room.pk, actor=staff, reason="expert reported unwell")
    assert (ended.state, ended.cancel_reason) == (RoomState.CANCELED, "canceled_by_staff")
    settlement = Settlement.objects.get(payment__seat=seat)
    assert (settlement.amount_minor, settlement.rule) == (0, "released")
    assert _inside(room.pk) == set()
    assert StaffAction.objects.get().kind == StaffActionKind.ROOM_END
    mail = OutboundEmail.objects.get(key=f"booking-canceled:{seat.pk}:client")
    assert "is canceled by Parley" in mail.body and "Nothing is charged" in mail.body


def test_staff_ending_a_live_group_room_charges_no_fee_to_a_client_not_there_yet(
    staff: User,
) -> None:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    group = OfferingFactory.create(expert=expert, capacity=3)
    with time_machine.travel(NOW, tick=False):
        room = rooms.group_room_publish(expert, group, CALL_START)
        present, late = (
            seat_pay(rooms.group_seat_reserve(UserFactory.create(), room.pk)) for _ in range(2)
        )
    with time_machine.travel(CALL_START - dt.timedelta(minutes=1), tick=False):
        rooms.rooms_advance()
    with time_machine.travel(CALL_START, tick=False):
        rooms.presence_open(room.pk, expert, connection_id="expert-socket")
        rooms.presence_open(room.pk, present.client, connection_id="client-socket")
    with time_machine.travel(IN_THE_CALL, tick=False):
        services.staff_room_end(room.pk, actor=staff, reason="abuse in the room")
    fee = Settlement.objects.get(payment__seat=late)
    assert (fee.amount_minor, fee.rule) == (0, "released")
    assert "before this client joined" in fee.explanation
    # The client who was there is priced as a call, not released: two minutes in the room but
    # no media link reported, so a call that never connected, charged nothing.
    came = Settlement.objects.get(payment__seat=present)
    assert (came.amount_minor, came.rule, came.inputs["outcome"]) == (
        0,
        "under_a_minute",
        "completed",
    )


def test_ending_an_ended_room_is_refused_and_writes_nothing(live_seat: Seat, staff: User) -> None:
    services.staff_room_end(live_seat.room_id, actor=staff, reason="first")
    with pytest.raises(services.ModerationError, match="already ended"):
        services.staff_room_end(live_seat.room_id, actor=staff, reason="second")
    assert StaffAction.objects.count() == 1


def test_a_ban_suspends_the_account_and_takes_it_out_of_its_rooms(
    live_seat: Seat, staff: User
) -> None:
    affected = services.staff_user_ban(live_seat.client_id, actor=staff, reason="fraud")
    assert affected == [live_seat.room_id]
    client = User.objects.get(pk=live_seat.client_id)
    assert not client.is_active
    assert _inside(live_seat.room_id) == {live_seat.room.expert_id}
    assert StaffAction.objects.get().kind == StaffActionKind.USER_BAN
    # A banned account's browser is signed out on its next request.
    browser = Client()
    browser.force_login(client)
    assert not browser.get(reverse("home")).wsgi_request.user.is_authenticated


def test_banning_the_expert_ends_the_rooms_they_host(live_seat: Seat, staff: User) -> None:
    services.staff_user_ban(live_seat.room.expert_id, actor=staff, reason="no-shows and abuse")
    room = Room.objects.get(pk=live_seat.room_id)
    assert (room.state, room.close_reason) == (RoomState.CLOSED, "terminated_by_staff")


def test_a_staff_member_who_is_not_a_superuser_cannot_ban_staff(live_seat: Seat) -> None:
    colleague = StaffFactory.create(is_superuser=False)
    moderator = StaffFactory.create(is_superuser=False)
    with pytest.raises(services.ModerationError, match="Only a superuser can ban a staff"):
        services.staff_user_ban(colleague.pk, actor=moderator, reason="dispute")
    colleague.refresh_from_db()
    assert colleague.is_active
    assert not StaffAction.objects.exists()


def test_a_superuser_can_ban_staff_and_lift_it(staff: User) -> None:
    colleague = StaffFactory.create(is_superuser=False)
    services.staff_user_ban(colleague.pk, actor=staff, reason="left the company")
    services.staff_user_unban(colleague.pk, actor=staff, reason="came back")
    colleague.refresh_from_db()
    assert colleague.is_active
    assert [a.kind for a in StaffAction.objects.order_by("pk")] == ["user_ban", "user_unban"]


@pytest.mark.parametrize(
    "attempt",
    ["client is not staff", "no reason", "remove the expert", "ban oneself"],
)
def test_refused_live_actions_write_nothing(live_seat: Seat, staff: User, attempt: str) -> None:
    room = live_seat.room
    events_before = RoomEvent.objects.count()
    with pytest.raises(services.ModerationError):
        if attempt == "client is not staff":
            services.staff_room_end(room.pk, actor=UserFactory.create(), reason="x")
        elif attempt == "no reason":
            services.staff_participant_remove(room.pk, live_seat.client_id, actor=staff, reason=" ")
        elif attempt == "remove the expert":
            services.staff_participant_remove(room.pk, room.expert_id, actor=staff, reason="x")
        else:
            services.staff_user_ban(staff.pk, actor=staff, reason="x")
    assert not StaffAction.objects.exists()
    assert RoomEvent.objects.count() == events_before
    assert _inside(room.pk) == {room.expert_id, live_seat.client_id}
    assert Room.objects.get(pk=room.pk).state == RoomState.LIVE


# --- The admin desk -----------------------------------------------------------------------


@pytest.fixture
def desk(staff: User) -> Client:
    """A staff browser signed in with password and authenticator code."""
    secret = totp_enable(staff)
    browser = Client()
    with time_machine.travel(dt.datetime.now(dt.UTC), tick=True):
        login_with_mfa(browser, staff, secret)
    return browser


def test_the_live_rooms_list_shows_who_is_in_since_when_and_the_time_left(
    live_seat: Seat, desk: Client
) -> None:
    page = desk.get(reverse("admin:moderation_liveroom_changelist")).content.decode()
    assert live_seat.room.title in page
    assert f"{live_seat.client.display_name} ({CALL_START:%H:%M:%S})" in page
    assert "58:00" in page  # a 60-minute session, 2 minutes in
    assert 'http-equiv="refresh"' in page


def test_staff_remove_a_participant_from_the_live_room_page(
    live_seat: Seat, desk: Client, staff: User
) -> None:
    url = reverse("admin:moderation_liveroom_live", args=[live_seat.room_id])
    response = desk.post(
        url, {"action": "remove", "user": live_seat.client_id, "reason": "threats"}
    )
    assert response.status_code == 302
    assert _inside(live_seat.room_id) == {live_seat.room.expert_id}
    assert StaffAction.objects.get().actor == staff


def test_a_live_action_without_a_reason_says_so_and_does_nothing(
    live_seat: Seat, desk: Client
) -> None:
    url = reverse("admin:moderation_liveroom_live", args=[live_seat.room_id])
    response = desk.post(url, {"action": "end", "reason": ""})
    assert response.status_code == 400
    assert "This field is required" in response.content.decode()
    assert Room.objects.get(pk=live_seat.room_id).state == RoomState.LIVE


def test_a_non_superuser_banning_staff_from_the_desk_gets_the_reason(
    live_seat: Seat,
) -> None:
    moderator = StaffFactory.create(is_superuser=False)
    from django.contrib.auth.models import Permission

    moderator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_liveroom", "change_liveroom", "change_user"])
    )
    secret = totp_enable(moderator)
    browser = Client()
    login_with_mfa(browser, moderator, secret)
    expert = live_seat.room.expert
    User.objects.filter(pk=expert.pk).update(is_staff=True)
    url = reverse("admin:moderation_liveroom_live", args=[live_seat.room_id])
    response = browser.post(url, {"action": "ban", "user": expert.pk, "reason": "x"})
    assert response.status_code == 400
    assert "Only a superuser can ban a staff account" in response.content.decode()
    assert User.objects.get(pk=expert.pk).is_active
    assert not StaffAction.objects.exists()


def test_staff_without_a_second_factor_in_this_session_cannot_act(live_seat: Seat) -> None:
    staff = StaffFactory.create(is_superuser=True)
    totp_enable(staff)
    browser = Client()
    browser.force_login(staff)  # a password-only session
    url = reverse("admin:moderation_liveroom_live", args=[live_seat.room_id])
    response = browser.post(url, {"action": "end", "reason": "x"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("mfa_reauthenticate"))
    assert Room.objects.get(pk=live_seat.room_id).state == RoomState.LIVE
    assert not StaffAction.objects.exists()


@pytest.mark.parametrize(
    "url_name",
    [
        "admin:moderation_liveroom_changelist",
        "admin:moderation_dispute_changelist",
        "admin:moderation_report_changelist",
        "admin:moderation_staffaction_changelist",
    ],
)
def test_no_moderation_page_is_reachable_by_non_staff(live_seat: Seat, url_name: str) -> None:
    browser = Client()
    browser.force_login(live_seat.client)
    assert browser.get(reverse(url_name)).status_code == 403
    live = reverse("admin:moderation_liveroom_live", args=[live_seat.room_id])
    assert browser.post(live, {"action": "end", "reason": "x"}).status_code == 403
    assert Room.objects.get(pk=live_seat.room_id).state == RoomState.LIVE


@pytest.mark.parametrize("who", ["client", "expert"])
def test_a_ban_cancels_the_accounts_upcoming_sessions_with_nothing_charged(
    staff: User, who: str
) -> None:
    seat = seat_booked()
    banned = seat.client if who == "client" else seat.room.expert
    with time_machine.travel(CALL_START - dt.timedelta(hours=2), tick=False):
        assert services.staff_user_ban(banned.pk, actor=staff, reason="fraud") == []
    seat.refresh_from_db()
    room = Room.objects.get(pk=seat.room_id)
    assert (seat.state, room.state) == ("canceled", RoomState.CANCELED)
    assert Settlement.objects.get(payment__seat=seat).amount_minor == 0
    action = StaffAction.objects.get()
    assert action.data["upcoming_canceled"] == [room.pk]


def test_a_ban_from_the_live_room_page_needs_the_permission_to_change_users(
    live_seat: Seat,
) -> None:
    from django.contrib.auth.models import Permission

    moderator = StaffFactory.create(is_superuser=False)
    moderator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_liveroom", "change_liveroom"])
    )
    browser = Client()
    login_with_mfa(browser, moderator, totp_enable(moderator))
    url = reverse("admin:moderation_liveroom_live", args=[live_seat.room_id])
    response = browser.post(url, {"action": "ban", "user": live_seat.client_id, "reason": "x"})
    assert response.status_code == 400
    assert "Banning needs the permission to change users" in response.content.decode()
    stranger = UserFactory.create()
    response = browser.post(url, {"action": "remove", "user": stranger.pk, "reason": "x"})
    assert "That person is not in this room" in response.content.decode()
    assert User.objects.get(pk=live_seat.client_id).is_active
    assert not StaffAction.objects.exists()


def test_a_ban_while_the_client_waits_in_the_lobby_cancels_free(staff: User) -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(CALL_START - dt.timedelta(minutes=5), tick=False):
        rooms.rooms_advance()
        rooms.presence_open(room.pk, seat.client, connection_id="lobby")
        services.staff_user_ban(room.expert_id, actor=staff, reason="fraud")
    room.refresh_from_db()
    assert room.state == RoomState.CANCELED
    assert _inside(room.pk) == set()
    assert Settlement.objects.get(payment__seat=seat).amount_minor == 0
