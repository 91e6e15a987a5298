"""The room's story in admin: every record of a room in time order, in a fixed number of
queries however long the story is, for staff only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from billing.models import (
    CommandKind,
    CommandState,
    PaymentCommand,
    PaymentEvent,
    WebhookEvent,
)
from billing.tests.helpers import commands_run_pending
from moderation.models import (
    Dispute,
    DisputeReason,
    DisputeSource,
    Report,
    ReportCategory,
    StaffAction,
    StaffActionKind,
)
from moderation.services.reports import report_file, report_resolve
from moderation.story import room_story
from rooms.models import CallStats, MediaLink, Presence, Rating, Room, RoomEvent, Seat
from rooms.tests.factories import CALL_START, room_closed_after_a_call, seat_booked

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> User:
    return StaffFactory.create()


@pytest.fixture
def staff_client(staff: User) -> Client:
    client = Client()
    login_with_mfa(client, staff, totp_enable(staff))
    return client


def _url(room: Room) -> str:
    return reverse("admin:rooms_room_story", args=[room.pk])


def _at(minutes: float) -> dt.datetime:
    return CALL_START + dt.timedelta(minutes=minutes)


def _closed_call() -> tuple[Room, Seat]:
    """A 3-minute call, closed and settled, its capture sent to the (local) provider."""
    seat = seat_booked()
    room = room_closed_after_a_call(seat)
    with time_machine.travel(_at(3.1), tick=False):
        commands_run_pending()
    seat.refresh_from_db()
    return room, seat


def _story_of_size(extra: int, staff: User) -> Room:
    """A closed call plus `extra` rows of every kind the story tells: room events, presences,
    media links, payment events and commands, webhook events, reports, chargebacks, staff
    actions and call stats."""
    room, seat = _closed_call()
    assert seat.payment is not None
    payment = seat.payment
    expert, client = room.expert, seat.client
    steps = [_at(3.5 + i * 0.01) for i in range(extra)]
    RoomEvent.objects.bulk_create(
        RoomEvent(room=room, kind=kind, actor=actor, data=data, created_at=at)
        for i, at in enumerate(steps)
        for kind, actor, data in [
            [
                ("rated", client, {"stars": 1 + i % 5}),
                ("pair_blocked", client, {"blocked": expert.pk}),
                ("participant_removed", staff, {"user": client.pk, "reason": "account suspended"}),
                ("a_kind_from_the_future", None, {"note": f"number {i}"}),
            ][i % 4]
        ]
    )
    Presence.objects.bulk_create(
        Presence(
            room=room,
            user=(expert, client)[i % 2],
            connection_id=f"bulk-{room.pk}-{i}",
            opened_at=at,
            last_heartbeat_at=at + dt.timedelta(seconds=4),
            closed_at=at + dt.timedelta(seconds=5),
            close_reason=("dropped", "left", "stale")[i % 3],
        )
        for i, at in enumerate(steps)
    )
    MediaLink.objects.bulk_create(
        MediaLink(
            room=room,
            client=client,
            reported_by=(expert, client)[i % 2],
            started_at=at,
            ended_at=at + dt.timedelta(seconds=3) if i % 5 else None,
            candidate_type=("host", "srflx", "relay")[i % 3],
        )
        for i, at in enumerate(steps)
        # One open link per reporter at most (the schema says so).
        if i % 5 or i < 2
    )
    PaymentEvent.objects.bulk_create(
        PaymentEvent(payment=payment, kind=kind, amount_minor=amount, data=data, created_at=at)
        for i, at in enumerate(steps)
        for kind, amount, data in [
            [
                ("payout_held", None, {"reason": f"chargeback du_{i} opened"}),
                ("refunded_at_provider", 100, {"charge": "ch_x"}),
                ("authorization_failed", None, {"source": "webhook", "error": "card declined"}),
            ][i % 3]
        ]
    )
    PaymentCommand.objects.bulk_create(
        PaymentCommand(
            payment=payment,
            kind=CommandKind.REFUND,
            amount_minor=100,
            state=(CommandState.SUCCEEDED, CommandState.FAILED, CommandState.PENDING)[i % 3],
            reason=f"goodwill {i}",
            attempts=i % 4,
            provider_ref=f"re_{i}" if i % 3 == 0 else "",
            last_error="card expired" if i % 3 == 1 else "",
            created_at=at,
            finished_at=at + dt.timedelta(seconds=2) if i % 3 != 2 else None,
        )
        for i, at in enumerate(steps)
    )
    WebhookEvent.objects.bulk_create(
        WebhookEvent(
            provider=payment.provider,
            event_id=f"evt_{room.pk}_{i}",
            type=("payment_intent.succeeded", "charge.refunded")[i % 2],
            payload={
                "data": {
                    "object": {"id": payment.intent_id}
                    if i % 2 == 0
                    else {"id": f"ch_{i}", "payment_intent": payment.intent_id}
                }
            },
            received_at=at,
            processed_at=at + dt.timedelta(milliseconds=40),
        )
        for i, at in enumerate(steps)
    )
    Report.objects.bulk_create(
        Report(
            room=room,
            reporter=client,
            about=expert,
            category=ReportCategory.TECHNICAL,
            text=f"The video froze ({i}).",
            created_at=at,
        )
        for i, at in enumerate(steps)
    )
    Dispute.objects.bulk_create(
        Dispute(
            seat=seat,
            payment=payment,
            client=client,
            source=DisputeSource.CHARGEBACK,
            reason=DisputeReason.CHARGEBACK,
            provider_dispute_id=f"du_{room.pk}_{i}",
            charged_minor=payment.captured_minor,
            currency=payment.currency,
            created_at=at,
        )
        for i, at in enumerate(steps)
    )
    StaffAction.objects.bulk_create(
        StaffAction(
            actor=staff,
            kind=StaffActionKind.REPORT_RESOLVE,
            reason=f"Looked at it ({i})",
            room=room,
            created_at=at,
        )
        for i, at in enumerate(steps)
    )
    CallStats.objects.bulk_create(
        CallStats(
            room=room,
            reporter=reporter,
            peer=peer,
            created_at=at,
            rtt_ms=20 + i,
            packet_loss=0.01,
            bitrate_in_kbps=800,
            bitrate_out_kbps=700,
        )
        for i, at in enumerate(steps)
        for reporter, peer in [(expert, client), (client, expert)]
    )
    Rating.objects.create(room=room, client=client, expert=expert, stars=4, comment="Helpful")
    return room


def _queries_to_render(client: Client, room: Room) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(_url(room))
    assert response.status_code == 200
    return len(queries)


def test_a_story_of_500_records_takes_as_many_queries_as_one_of_ten(
    staff: User, staff_client: Client, django_assert_max_num_queries: Any
) -> None:
    small = _story_of_size(1, staff)
    large = _story_of_size(60, staff)
    assert len(room_story(small.pk).entries) < 40
    assert len(room_story(large.pk).entries) >= 500

    with django_assert_max_num_queries(20):
        response = staff_client.get(_url(large))
    assert response.status_code == 200
    assert response.content.decode().count('<tr id="entry-') >= 500

    small_count = _queries_to_render(staff_client, small)
    large_count = _queries_to_render(staff_client, large)
    assert small_count == large_count


def test_the_story_is_in_time_order_and_tells_what_decides_a_dispute(
    staff: User, staff_client: Client
) -> None:
    room, seat = _closed_call()
    assert seat.payment is not None
    payment = seat.payment
    with time_machine.travel(_at(10), tick=False):
        report = report_file(room.pk, seat.client, category="fraud", text="Ended after 3 min.")
    with time_machine.travel(_at(20), tick=False):
        report_resolve(report.pk, actor=staff, resolution="The call ran as metered; no refund.")
    WebhookEvent.objects.create(
        provider=payment.provider,
        event_id="evt_story_1",
        type="charge.dispute.created",
        payload={"data": {"object": {"id": "du_1", "payment_intent": payment.intent_id}}},
        received_at=_at(30),
    )

    page = staff_client.get(_url(room)).content.decode()

    story = room_story(room.pk)
    times = [entry.at for entry in story.entries]
    assert times == sorted(times)
    in_order = [
        "Booked by the client",
        "Seat confirmed",
        "Room: Scheduled → Lobby open",
        "joined",
        "Media up between the expert and",
        "Room closed",
        "Settled the seat of",
        "Capture 120.00 EUR requested — done",
        "Report: Fraud or no-show",
        "Staff: resolved a report",
        "Provider: the card&#x27;s bank opened a chargeback",
    ]
    positions = [page.index(text) for text in in_order]
    assert positions == sorted(positions), in_order
    # The settlement: what it cost, on which rule, for how many seconds (both in from the
    # start, media up from +0:30 to +3:00: 150 s).
    assert "150 s (2 min 30 s)" in page
    assert "120.00 EUR" in page
    assert "fixed" in page
    # Where the billable time came from: the booked time next to the live window, so staff
    # see why a call that went live early billed less than it was live.
    assert "Metered: booked time" in page
    assert "Metered: live window" in page
    # The command's outcome, the webhook's type, the staff action's reason.
    assert "Provider reference" in page
    assert "charge.dispute.created" in page
    assert "evt_story_1" in page
    assert "The call ran as metered; no refund." in page
    # Facts told once: the "reported" room event is folded into the report, the payment's
    # "capture_requested" event into the command.
    assert page.count("Report: Fraud or no-show") == 1
    assert "Capture requested" not in page
    assert reverse("admin:billing_payment_change", args=[payment.pk]) in page
    assert reverse("admin:moderation_report_change", args=[report.pk]) in page

    only_webhooks = staff_client.get(_url(room), {"only": "webhook"}).content.decode()
    assert "charge.dispute.created" in only_webhooks
    assert "Report: Fraud or no-show" not in only_webhooks


def test_an_interval_still_open_says_so() -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    Presence.objects.create(
        room=room,
        user=seat.client,
        connection_id="open-1",
        opened_at=_at(0),
        last_heartbeat_at=_at(1),
    )
    entry = next(e for e in room_story(room.pk).entries if e.category == "presence")
    assert ("Until", "still open") in [(fact.label, fact.value) for fact in entry.facts]


def test_only_staff_who_passed_two_factor_read_a_story(client: Client, staff: User) -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)

    anonymous = client.get(_url(room))
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith(reverse("account_login"))

    client.force_login(UserFactory.create())
    assert client.get(_url(room)).status_code == 403

    totp_enable(staff)
    client.force_login(staff)  # a password-only session: sent to the second factor
    not_verified = client.get(_url(room))
    assert not_verified.status_code == 302
    assert not_verified["Location"].startswith(reverse("mfa_reauthenticate"))


def test_a_story_is_read_only_and_a_missing_room_is_404(staff_client: Client) -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    assert staff_client.post(_url(room)).status_code == 405
    missing = reverse("admin:rooms_room_story", args=[room.pk + 1000])
    assert staff_client.get(missing).status_code == 404


def test_a_close_that_ran_late_says_when_it_ran_and_that_the_bill_ends_at_the_paid_end() -> None:
    from rooms import services as rooms

    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(_at(-5), tick=False):
        assert rooms.room_open(room.pk)
    with time_machine.travel(_at(0), tick=False):
        rooms.presence_open(room.pk, room.expert, connection_id="expert")
        rooms.presence_open(room.pk, seat.client, connection_id="client")
    # No worker at the paid end: the sweep that closes the room runs half an hour late.
    Presence.objects.filter(room=room).update(last_heartbeat_at=room.ends_at)
    with time_machine.travel(room.ends_at + dt.timedelta(minutes=30), tick=False):
        assert rooms.rooms_advance()["closed"] == 1
    entry = next(e for e in room_story(room.pk).entries if e.title == "Room closed")
    facts = {fact.label: fact.value for fact in entry.facts}
    assert facts["Call ended (billed to)"] == "2026-12-01 15:00:00.000"
    assert facts["Close ran at"].endswith("30 min 00 s late")

    on_time = room_closed_after_a_call(seat_booked())
    entry = next(e for e in room_story(on_time.pk).entries if e.title == "Room closed")
    assert "Close ran at" not in [fact.label for fact in entry.facts]
