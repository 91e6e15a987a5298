"""What people do about a session from its page: report (the call's fetch in JSON, the form
after it), block (which ends a running call for the pair, on the sockets of both), unblock,
and a client's dispute of the charge; and what the summary then shows each side."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from channels.db import database_sync_to_async
from django.test import Client
from django.urls import reverse

from accounts.models import Block, User
from accounts.tests.factories import StaffFactory, UserFactory
from billing.models import CommandState
from billing.tests.helpers import commands_run_pending
from moderation import services
from moderation.models import Dispute, DisputeState, Report
from moderation.services import Outcome
from rooms import services as rooms
from rooms.errors import BookingRefused
from rooms.models import CloseReason, Offering, Room, RoomState, Seat
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    room_closed_after_a_call,
    seat_booked,
    seat_pay,
    weekdays_available,
)
from rooms.tests.signaling import Call, Socket, call_create, room_running_now, session_cookie

JSON = {"Accept": "application/json"}
SETTLED_AT = CALL_START + dt.timedelta(minutes=3)  # room_closed_after_a_call's end
CHARGED = 12000  # OfferingFactory's fixed price


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _url(name: str, room: Room | int) -> str:
    return reverse(f"moderation:{name}", args=[room if isinstance(room, int) else room.pk])


def _messages(response: Any) -> str:
    return " ".join(str(message) for message in response.context["messages"])


@pytest.fixture
def an_hour_after_the_call() -> Iterator[None]:
    with time_machine.travel(CALL_START + dt.timedelta(hours=1), tick=False):
        yield


@pytest.fixture
def seat(db: None) -> Seat:
    return seat_booked()


def _group_room(clients: int = 2) -> tuple[Room, list[User]]:
    """A group session at CALL_START with `clients` paid seats, its lobby open."""
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert, capacity=3)
    with time_machine.travel(NOW, tick=False):
        room = rooms.group_room_publish(expert, offering, CALL_START)
        people = [UserFactory.create() for _ in range(clients)]
        for person in people:
            seat_pay(rooms.group_seat_reserve(person, room.pk))
    with time_machine.travel(CALL_START - dt.timedelta(minutes=10), tick=False):
        rooms.rooms_advance()
    # Sockets are admitted by the real clock: the session runs now.
    room_running_now(room.pk)
    return Room.objects.select_related("expert").get(pk=room.pk), people


# --- Report ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_report_sent_from_the_call_is_answered_in_json(seat: Seat) -> None:
    url = _url("report", seat.room_id)
    response = _signed_in(seat.client).post(
        url, {"category": "harassment", "text": "Shouting at me."}, headers=JSON
    )
    assert response.status_code == 200
    assert response.json() == {
        "message": "Sent to staff. Thank you: they will look at your report."
    }
    report = Report.objects.get()
    assert (report.reporter_id, report.about_id, report.category, report.text) == (
        seat.client_id,
        seat.room.expert_id,
        "harassment",
        "Shouting at me.",
    )


@pytest.mark.django_db
def test_a_report_refused_in_json_says_what_was_wrong_and_writes_nothing(seat: Seat) -> None:
    url = _url("report", seat.room_id)
    client = _signed_in(seat.client)
    empty = client.post(url, {"category": "other", "text": "  "}, headers=JSON)
    assert empty.status_code == 400
    assert empty.json() == {
        "error": "The report was not sent. Tell us more: This field is required."
    }
    wrong = client.post(url, {"category": "spam", "text": "x"}, headers=JSON)
    assert wrong.status_code == 400
    assert "What happened: Select a valid choice." in wrong.json()["error"]
    stranger = _signed_in(UserFactory.create()).post(
        url, {"category": "other", "text": "x"}, headers=JSON
    )
    assert stranger.status_code == 404
    assert stranger.json() == {"error": "There is no such session among yours."}
    assert not Report.objects.exists()


@pytest.mark.django_db
def test_the_expert_of_a_group_session_reports_the_client_they_choose() -> None:
    room, (first, second) = _group_room()
    expert = _signed_in(room.expert)
    url = _url("report", room)
    answer = expert.post(
        url, {"user": second.pk, "category": "inappropriate", "text": "x"}, headers=JSON
    )
    assert answer.status_code == 200
    assert Report.objects.get().about_id == second.pk
    outsider = UserFactory.create()
    refused = expert.post(
        url, {"user": outsider.pk, "category": "other", "text": "x"}, headers=JSON
    )
    assert refused.status_code == 400
    assert "That person was not a client of this session." in refused.json()["error"]
    # Without a choice the report is about the session as a whole.
    expert.post(url, {"user": "", "category": "technical", "text": "Echo."}, headers=JSON)
    assert Report.objects.filter(about=None, category="technical").exists()
    assert Report.objects.count() == 2
    assert first.pk not in set(Report.objects.values_list("about_id", flat=True))


@pytest.mark.django_db
def test_the_call_page_has_labelled_report_and_block_controls_and_their_dialogs() -> None:
    room, (first, second) = _group_room()
    page = _signed_in(room.expert).get(reverse("rooms:join", args=[room.pk])).content.decode()
    for marker in (
        'id="report-open"',
        'id="block-open"',
        'id="report-dialog"',
        'id="block-dialog"',
        'id="block-confirm"',
        'id="report-category"',
        # The expert of a group session chooses whom, from its clients.
        f'<option value="{first.pk}">{first.display_name}</option>',
        f'<option value="{second.pk}">{second.display_name}</option>',
        "the others stay",
    ):
        assert marker in page, marker
    client_page = _signed_in(first).get(reverse("rooms:join", args=[room.pk])).content.decode()
    assert f"Block {room.expert.display_name}?" in client_page
    assert 'id="block-call-user"' not in client_page


# --- Block during a call: what the sockets of both sides see ----------------------------------


async def _connected(room_id: int, *users: User) -> list[Socket]:
    """Everyone in, in order, each having heard of the ones after it."""
    sockets: list[Socket] = []
    for user in users:
        socket = Socket(room_id, await database_sync_to_async(session_cookie)(user))
        await socket.open()
        for earlier in sockets:
            await earlier.receive_type("peer_joined")
        sockets.append(socket)
    return sockets


def _post_block(
    blocker: User, room_id: int, data: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    response = _signed_in(blocker).post(_url("block", room_id), data or {}, headers=JSON)
    return response.status_code, response.json()


def _book_again(client: User, offering: Offering) -> str:
    with time_machine.travel(NOW, tick=False):
        try:
            rooms.booking_reserve(client, offering, CALL_START + dt.timedelta(days=1))
        except BookingRefused as refused:
            return str(refused)
    return "booked"


@pytest.mark.django_db(transaction=True)
async def test_a_client_blocking_the_expert_mid_call_ends_it_for_both_and_cannot_come_back() -> (
    None
):
    call: Call = await database_sync_to_async(call_create)()
    expert, client = await _connected(call.room.pk, call.expert, call.client)

    status, answer = await database_sync_to_async(_post_block)(call.client, call.room.pk)

    assert status == 200
    assert answer == {
        "message": f"You blocked {call.expert.display_name}.",
        "outcome": "ended",
        "blocked": {"id": call.expert.pk, "name": call.expert.display_name},
    }
    # Both sockets hear the usual end of a session; nothing names the block.
    for socket in (client, expert):
        ended = await socket.receive_type("ended")
        assert ended["reason"] == CloseReason.COMPLETED
        assert await socket.closed_with() == 4000
    room = await Room.objects.aget(pk=call.room.pk)
    assert room.state == RoomState.CLOSED
    assert await Block.objects.filter(blocker=call.client, blocked=call.expert).aexists()

    again = Socket(call.room.pk, await database_sync_to_async(session_cookie)(call.client))
    refused = await again.open()
    # The session is over, and that is what the client hears (nothing names the block).
    assert (refused["type"], refused["code"]) == ("error", "room_ended")
    assert await again.closed_with() == 4410
    assert room.offering_id is not None
    offering = await Offering.objects.aget(pk=room.offering_id)
    refusal = await database_sync_to_async(_book_again)(call.client, offering)
    assert refusal == "You cannot book this expert."


@pytest.mark.django_db(transaction=True)
async def test_the_expert_blocking_the_client_of_a_private_call_ends_it_for_both() -> None:
    call: Call = await database_sync_to_async(call_create)()
    expert, client = await _connected(call.room.pk, call.expert, call.client)

    status, answer = await database_sync_to_async(_post_block)(call.expert, call.room.pk)

    assert (status, answer["outcome"]) == (200, "ended")
    assert answer["message"] == f"You blocked {call.client.display_name}."
    for socket in (client, expert):
        assert (await socket.receive_type("ended"))["reason"] == CloseReason.ENDED_BY_EXPERT
        assert await socket.closed_with() == 4000


@pytest.mark.django_db(transaction=True)
async def test_the_expert_blocking_one_client_of_a_group_call_takes_out_only_that_client() -> None:
    room, (blocked, other) = await database_sync_to_async(_group_room)()
    expert_socket, blocked_socket, other_socket = await _connected(
        room.pk, room.expert, blocked, other
    )

    status, answer = await database_sync_to_async(_post_block)(
        room.expert, room.pk, {"user": blocked.pk, "reason": "Rude to the others."}
    )

    assert (status, answer["outcome"]) == (200, "peer_removed")
    assert answer["blocked"] == {"id": blocked.pk, "name": blocked.display_name}
    removed = await blocked_socket.receive_type("removed")
    assert removed["message"] == "The session has ended for you."
    assert removed["reason"] == "session_ended"  # the block is not told
    assert await blocked_socket.closed_with() == 4002
    # The others hear that the client left, as when anyone leaves.
    for socket in (expert_socket, other_socket):
        left = await socket.receive_type("peer_left")
        assert (left["peer_id"], left["reason"]) == (blocked.pk, "left")
    # The call goes on for the others.
    assert (await Room.objects.aget(pk=room.pk)).state in (RoomState.OPEN, RoomState.LIVE)
    assert await other_socket.silent()
    block = await Block.objects.aget(blocker=room.expert)
    assert (block.blocked_id, block.reason) == (blocked.pk, "Rude to the others.")

    again = Socket(room.pk, await database_sync_to_async(session_cookie)(blocked))
    refused = await again.open()
    assert (refused["type"], refused["code"]) == ("error", "blocked")
    await expert_socket.close()
    await other_socket.close()


@pytest.mark.django_db(transaction=True)
async def test_a_client_blocking_the_expert_of_a_group_call_leaves_it_alone() -> None:
    room, (blocker, other) = await database_sync_to_async(_group_room)()
    expert_socket, blocker_socket, other_socket = await _connected(
        room.pk, room.expert, blocker, other
    )

    status, answer = await database_sync_to_async(_post_block)(blocker, room.pk)

    assert (status, answer["outcome"]) == (200, "removed")
    assert answer["message"] == f"You blocked {room.expert.display_name}."
    assert await blocker_socket.closed_with() == 4002
    for socket in (expert_socket, other_socket):
        left = await socket.receive_type("peer_left")
        assert (left["peer_id"], left["reason"]) == (blocker.pk, "left")
    await expert_socket.close()
    await other_socket.close()


# --- Block: the edges ------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_expert_of_a_group_session_must_say_whom_to_block() -> None:
    room, (first, _) = _group_room()
    expert = _signed_in(room.expert)
    unnamed = expert.post(_url("block", room), {}, headers=JSON)
    assert unnamed.status_code == 400
    assert unnamed.json() == {
        "error": "Nobody was blocked. Whom to block: Choose which client to block."
    }
    stranger = UserFactory.create()
    outsider = expert.post(_url("block", room), {"user": stranger.pk}, headers=JSON)
    assert outsider.status_code == 400
    assert "That person was not a client of this session." in outsider.json()["error"]
    assert not Block.objects.exists()


@pytest.mark.django_db
def test_a_stranger_can_neither_block_report_nor_dispute_through_someone_elses_room(
    seat: Seat,
) -> None:
    room = room_closed_after_a_call(seat)
    stranger = _signed_in(UserFactory.create())
    for name, data in (
        ("block", {}),
        ("report", {"category": "other", "text": "x"}),
        ("dispute", {"reason": "quality", "text": "x"}),
    ):
        assert stranger.post(_url(name, room), data).status_code == 404, name
        assert stranger.post(_url(name, room), data, headers=JSON).status_code == 404, name
    assert stranger.post(_url("block", 999999), {}).status_code == 404
    assert not Block.objects.exists()
    assert not Report.objects.exists()
    assert not Dispute.objects.exists()


@pytest.mark.django_db
def test_blocking_after_the_call_then_unblocking_from_the_list(seat: Seat) -> None:
    room = room_closed_after_a_call(seat)
    client = _signed_in(seat.client)
    expert_name = room.expert.display_name

    page = client.post(_url("block", room), {"reason": ""}, follow=True)

    assert f"You blocked {expert_name}: neither of you can book" in _messages(page)
    assert Block.objects.filter(blocker=seat.client, blocked=room.expert).exists()
    summary = client.get(reverse("rooms:room_summary", args=[room.pk])).content.decode()
    assert f"Unblock {expert_name}" in summary
    again = client.post(_url("block", room), {}, headers=JSON)
    assert again.json()["message"] == f"You had already blocked {expert_name}."

    listing = client.get(reverse("moderation:blocks")).content.decode()
    assert expert_name in listing
    assert reverse("moderation:unblock", args=[room.expert_id]) in listing
    # The expert's list is theirs: nobody learns there who blocked them.
    assert (
        seat.client.display_name
        not in _signed_in(room.expert).get(reverse("moderation:blocks")).content.decode()
    )

    back = reverse("rooms:join", args=[room.pk])
    response = client.post(reverse("moderation:unblock", args=[room.expert_id]), {"next": back})
    assert response.status_code == 302
    assert response["Location"] == back
    assert not Block.objects.exists()
    listing_after = client.get(reverse("moderation:blocks"))
    assert f"You unblocked {expert_name}." in _messages(listing_after)
    assert "You have not blocked anyone." in listing_after.content.decode()


@pytest.mark.django_db
def test_unblock_is_a_post_for_a_signed_in_user_and_goes_nowhere_foreign(seat: Seat) -> None:
    url = reverse("moderation:unblock", args=[seat.room.expert_id])
    assert Client().post(url).status_code == 302  # to the login page
    assert Client().get(reverse("moderation:blocks")).status_code == 302
    client = _signed_in(seat.client)
    assert client.get(url).status_code == 405
    services.block_create(seat.client, seat.room.expert_id)
    response = client.post(url, {"next": "https://elsewhere.example/"})
    assert response["Location"] == reverse("moderation:blocks")
    assert not Block.objects.exists()


# --- Dispute -----------------------------------------------------------------------------------


def _charged(seat: Seat) -> Room:
    """The call closed and settled, and its capture sent (a refund needs a captured charge)."""
    room = room_closed_after_a_call(seat)
    assert set(commands_run_pending()) <= {CommandState.SUCCEEDED}
    return room


def _dispute(client: User, room: Room, **data: Any) -> Any:
    form = {"reason": "quality", "text": "The picture froze for most of the call.", **data}
    return _signed_in(client).post(_url("dispute", room), form, follow=True)


@pytest.mark.django_db
@pytest.mark.usefixtures("an_hour_after_the_call")
def test_a_client_disputes_their_charge_once(seat: Seat) -> None:
    room = _charged(seat)

    page = _dispute(seat.client, room)

    assert "Your dispute was sent to Parley staff." in _messages(page)
    dispute = Dispute.objects.get()
    assert (dispute.seat_id, dispute.client_id, dispute.state, dispute.reason) == (
        seat.pk,
        seat.client_id,
        DisputeState.OPEN,
        "quality",
    )
    body = page.content.decode()
    assert 'data-state="open"' in body
    assert "Open: Parley staff are looking at it." in body
    assert 'id="dispute-form"' not in body

    second = _dispute(seat.client, room, text="Again.")
    assert "You have already disputed this charge; its status is below." in _messages(second)
    assert Dispute.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.usefixtures("an_hour_after_the_call")
def test_a_dispute_with_a_wrong_reason_or_no_text_is_refused_in_json(seat: Seat) -> None:
    room = _charged(seat)
    client = _signed_in(seat.client)
    url = _url("dispute", room)
    chargeback = client.post(url, {"reason": "chargeback", "text": "x"}, headers=JSON)
    assert chargeback.status_code == 400
    assert "What went wrong: Select a valid choice." in chargeback.json()["error"]
    empty = client.post(url, {"reason": "quality", "text": ""}, headers=JSON)
    assert empty.json() == {
        "error": "The dispute was not sent. What happened: This field is required."
    }
    opened = client.post(url, {"reason": "wrong_amount", "text": "Charged twice."}, headers=JSON)
    assert opened.status_code == 200
    assert opened.json()["dispute"]["state"] == "open"
    assert Dispute.objects.count() == 1


@pytest.mark.django_db
@pytest.mark.usefixtures("an_hour_after_the_call")
def test_a_client_cannot_dispute_or_see_another_clients_seat(seat: Seat) -> None:
    room = _charged(seat)
    other_seat = seat_booked()
    other_room = _charged(other_seat)
    _dispute(other_seat.client, other_room)

    refused = _signed_in(seat.client).post(
        _url("dispute", other_room), {"reason": "quality", "text": "x"}
    )
    assert refused.status_code == 404
    assert Dispute.objects.get().client_id == other_seat.client_id
    summary = _signed_in(seat.client).get(reverse("rooms:room_summary", args=[room.pk]))
    assert "The picture froze" not in summary.content.decode()
    assert 'id="dispute-form"' in summary.content.decode()


@pytest.mark.django_db
def test_after_72_hours_the_dispute_is_refused_and_the_summary_says_since_when(seat: Seat) -> None:
    room = _charged(seat)
    with time_machine.travel(SETTLED_AT + dt.timedelta(hours=72, minutes=1), tick=False):
        page = _dispute(seat.client, room)
        summary = _signed_in(seat.client).get(reverse("rooms:room_summary", args=[room.pk]))
    assert "Charges can be disputed for 72 hours after the session" in _messages(page)
    assert not Dispute.objects.exists()
    body = summary.content.decode()
    assert "The time to dispute this charge (120.00 EUR) ended on" in body
    assert 'id="dispute-form"' not in body


@pytest.mark.django_db
@pytest.mark.usefixtures("an_hour_after_the_call")
def test_the_expert_cannot_dispute_and_sees_a_disputed_seat_without_the_clients_text(
    seat: Seat,
) -> None:
    room = _charged(seat)
    refused = _signed_in(room.expert).post(
        _url("dispute", room), {"reason": "quality", "text": "x"}, headers=JSON
    )
    assert refused.status_code == 400
    assert "Only a client disputes a charge" in refused.json()["error"]
    _dispute(seat.client, room)

    body = _signed_in(room.expert).get(reverse("rooms:join", args=[room.pk])).content.decode()

    assert f"{seat.client.display_name}'s charge is disputed" in body
    assert "your payout for it is on hold until Parley staff decide" in body
    assert "The picture froze" not in body
    assert 'id="dispute-form"' not in body


@pytest.mark.django_db
@pytest.mark.usefixtures("an_hour_after_the_call")
@pytest.mark.parametrize(
    ("outcome", "refund", "shown"),
    [
        (Outcome.REJECT, None, "Rejected: the charge stands."),
        (Outcome.REFUND_PARTIAL, 5000, "Partly refunded: 50.00 EUR goes back to your card."),
    ],
)
def test_the_summary_shows_the_decision_and_the_staff_note(
    seat: Seat, outcome: str, refund: int | None, shown: str
) -> None:
    room = _charged(seat)
    _dispute(seat.client, room)
    services.dispute_resolve(
        Dispute.objects.get().pk,
        actor=StaffFactory.create(),
        outcome=outcome,
        note="The recording shows the call dropped twice.",
        refund_minor=refund,
    )

    body = _signed_in(seat.client).get(reverse("rooms:room_summary", args=[room.pk]))

    text = body.content.decode()
    assert shown in text
    assert '<blockquote class="dispute-note">The recording shows the call dropped twice.' in text
    assert 'id="dispute-form"' not in text
    expert_view = _signed_in(room.expert).get(reverse("rooms:room_summary", args=[room.pk]))
    assert "The recording shows" not in expert_view.content.decode()
    assert "dispute was decided on" in expert_view.content.decode()
