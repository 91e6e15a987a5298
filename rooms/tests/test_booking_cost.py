"""What one booking costs (issue 18): its queries, counted so that one more fails a test; its
confirmation emails, rendered when they are sent rather than inside the payment's
authorization; and the expert's calendar locked by the hour, so bookings at other hours do not
wait for one another."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from django.core.mail import EmailMultiAlternatives
from django.db import connection, transaction
from django.test import Client
from pytest_django import DjangoAssertNumQueries, DjangoCaptureOnCommitCallbacks

from accounts import services as accounts_services
from accounts.models import OutboundEmail
from accounts.tests.factories import UserFactory
from rooms import services
from rooms.models import Offering, Room, Seat, SeatState
from rooms.services.records import expert_calendar_lock
from rooms.tests.factories import NOW
from rooms.tests.races import lock_held_until_waited_on, race

pytestmark = pytest.mark.django_db

UTC = dt.UTC
SLOT = dt.datetime(2026, 12, 2, 10, 0, tzinfo=UTC)

# The queries of a booking, in the test's transaction (the service's atomic blocks are
# savepoints here). booking_reserve: SAVEPOINT, the people with the expert's calendar and
# the client's booking lock (one read), the unpaid count, the payment with its event (one
# statement), the calendar's hour locks, the room with its seat and the seat's event unless
# a room overlaps (one statement), RELEASE. seat_confirm: SAVEPOINT, the guarded transition
# with its event and the seat read back with its room and both people (one statement), both
# emails in one insert, RELEASE. (Before issue 18: 21 and 17 outside a test; then 12 and 6.)
RESERVE_QUERIES = 7
CONFIRM_QUERIES = 4


@pytest.fixture(autouse=True)
def _frozen_now() -> Iterator[None]:
    with time_machine.travel(NOW, tick=True):
        yield


def test_a_booking_costs_a_known_number_of_queries(
    offering: Offering, django_assert_num_queries: DjangoAssertNumQueries
) -> None:
    client = UserFactory.create()
    services.booking_reserve(client, offering, SLOT - dt.timedelta(hours=1))  # caches warm
    with django_assert_num_queries(RESERVE_QUERIES):
        seat = services.booking_reserve(client, offering, SLOT)
    with django_assert_num_queries(CONFIRM_QUERIES):
        services.seat_confirm(seat.pk)
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED


def test_a_bookings_statements_are_prepared_once_per_connection(offering: Offering) -> None:
    """Every statement a booking sends is a prepared statement, parsed and planned once per
    connection: planning those long WITH statements was most of their cost on the server's
    side (docs/ARCHITECTURE.md, Prepared statements). A second booking prepares nothing new."""
    client = UserFactory.create()
    seat = services.booking_reserve(client, offering, SLOT - dt.timedelta(hours=1))
    services.seat_confirm(seat.pk)
    before = _prepared_statements()
    sent: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        sent.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        seat = services.booking_reserve(client, offering, SLOT)
        services.seat_confirm(seat.pk)
    # In the test's transaction the service's atomic blocks are savepoints: those are not ours.
    ours = [sql for sql in sent if not sql.startswith(("SAVEPOINT", "RELEASE SAVEPOINT"))]
    assert len(ours) == RESERVE_QUERIES + CONFIRM_QUERIES - 4
    prepared = _prepared_statements()
    assert prepared == before, "a second booking prepared statements the first did not"
    for sql in ours:
        assert any(_same(sql, statement) for statement in prepared), f"not prepared: {sql[:120]}"


def _prepared_statements() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return {statement for (statement,) in cursor.fetchall()}


def _same(ours: str, prepared: str) -> bool:
    """A statement as we wrote it (%s, %(name)s) against PostgreSQL's text of it ($1, $2…)."""
    import re

    placeholder = re.compile(r"%\((\w+)\)s|%s|\$\d+")
    return placeholder.sub("?", ours).strip() == placeholder.sub("?", prepared).strip()


def test_a_booking_next_to_a_stale_reservation_releases_it_and_books(
    offering: Offering,
) -> None:
    """The overlap read settles most bookings alone; an overlap still gets the full look."""
    stale = services.booking_reserve(UserFactory.create(), offering, SLOT)
    with time_machine.travel(NOW + dt.timedelta(minutes=11), tick=False):
        fresh = services.booking_reserve(UserFactory.create(), offering, SLOT)
    stale.refresh_from_db()
    assert stale.state == SeatState.EXPIRED
    assert Room.objects.get(pk=fresh.room_id).starts_at == SLOT


def test_confirmation_emails_are_queued_unrendered_and_rendered_when_sent(
    offering: Offering,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[Any],
) -> None:
    client = UserFactory.create(time_zone="Europe/Berlin", display_name="Ada Client")
    seat = services.booking_reserve(client, offering, SLOT)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.seat_confirm(seat.pk)
    queued = {email.key: email for email in OutboundEmail.objects.all()}
    assert set(queued) == {f"booking-confirmed:{seat.pk}", f"booking-new-for-expert:{seat.pk}"}
    for email in queued.values():
        # Nothing rendered inside the payment's authorization: ids and a subject only.
        assert (email.body, email.html, email.ics) == ("", "", "")
        assert email.renderer == "rooms.booking"
        assert email.renderer_args["seat"] == seat.pk
    assert queued[f"booking-confirmed:{seat.pk}"].subject == (
        f"Booked: {offering.title} with {offering.expert.display_name}"
    )

    for callback in callbacks:
        callback()  # the send tasks (eager in tests)

    by_recipient = {message.to[0]: message for message in mailoutbox}
    assert set(by_recipient) == {client.email, offering.expert.email}
    to_client = by_recipient[client.email]
    assert isinstance(to_client, EmailMultiAlternatives)
    # Rendered for its reader: the start in the client's zone, the session with the expert.
    assert "Wednesday 2 December 2026, 11:00 (Europe/Berlin)" in to_client.body
    assert f"{offering.title} with {offering.expert.display_name}" in to_client.body
    assert f"/r/{seat.room_id}/" in to_client.body
    [(html, mimetype)] = to_client.alternatives
    assert mimetype == "text/html" and str(html).startswith("<!DOCTYPE html>")
    [(name, ics, ics_type)] = to_client.attachments
    assert (name, ics_type) == ("invite.ics", "text/calendar; method=REQUEST")
    assert "METHOD:REQUEST" in ics and f"UID:room-{seat.room_id}@parley" in ics
    assert "DTSTART:20261202T100000Z" in ics
    assert f'ATTENDEE;CN="Ada Client":mailto:{client.email}' in ics
    to_expert = by_recipient[offering.expert.email]
    assert "Ada Client" in to_expert.body
    assert "ATTENDEE" not in to_expert.attachments[0][1]  # the expert is the organizer

    # The rows keep what was sent, as rows rendered when queued do.
    sent = OutboundEmail.objects.get(key=f"booking-confirmed:{seat.pk}")
    assert sent.sent_at is not None
    assert (sent.body, sent.html, sent.ics) == (to_client.body, html, ics)
    assert sent.ics_method == "REQUEST"


def test_a_confirmation_sent_after_a_move_shows_the_session_as_it_is_then(
    offering: Offering, django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks
) -> None:
    """Rendered at sending: a confirmation still in the outbox when the session moves says
    the new time, with the invitation's sequence of the move (never an older one)."""
    client = UserFactory.create(time_zone="UTC")
    seat = services.booking_reserve(client, offering, SLOT)
    with django_capture_on_commit_callbacks(execute=False):
        services.seat_confirm(seat.pk)
    moved = SLOT + dt.timedelta(days=1, hours=2)
    with django_capture_on_commit_callbacks(execute=False):
        services.seat_reschedule(seat.pk, actor=client, new_start=moved)
    email = OutboundEmail.objects.get(key=f"booking-confirmed:{seat.pk}")
    assert accounts_services.email_send(email.pk)
    email.refresh_from_db()
    assert "Thursday 3 December 2026, 12:00 (UTC)" in email.body
    assert "DTSTART:20261203T120000Z" in email.ics and "SEQUENCE:1" in email.ics


def test_an_email_whose_renderer_is_gone_is_parked_not_retried(offering: Offering) -> None:
    seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
    services.seat_confirm(seat.pk)
    email = OutboundEmail.objects.get(key=f"booking-confirmed:{seat.pk}")
    OutboundEmail.objects.filter(pk=email.pk).update(renderer="rooms.retired")
    assert not accounts_services.email_send(email.pk)
    email.refresh_from_db()
    assert email.parked_at is not None and email.sent_at is None
    assert "rooms.retired" in email.last_error


def test_queueing_an_email_for_a_renderer_nobody_registered_is_refused() -> None:
    with pytest.raises(ValueError, match="No email renderer"):
        accounts_services.emails_queue_to_render(
            [
                accounts_services.EmailToRender(
                    key="k", to="a@example.test", subject="s", renderer="nobody", args={}
                )
            ]
        )


def test_a_key_queued_twice_is_one_email(offering: Offering) -> None:
    seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
    email = accounts_services.EmailToRender(
        key=f"booking-confirmed:{seat.pk}",
        to="a@example.test",
        subject="Booked",
        renderer="rooms.booking",
        args={"template": "rooms/email/booking_confirmed.txt", "seat": seat.pk},
    )
    assert len(accounts_services.emails_queue_to_render([email])) == 1
    assert accounts_services.emails_queue_to_render([email]) == []
    assert OutboundEmail.objects.filter(key=email.key).count() == 1


@pytest.mark.django_db(transaction=True)
def test_bookings_of_one_expert_at_other_hours_do_not_wait_for_a_booking_in_progress(
    offering: Offering,
) -> None:
    """The calendar is locked by the hour: while one booking holds 10:00–11:00, a booking at
    13:00 goes through at once, and one at 10:00 queues until the first is done."""
    expert = offering.expert
    later, same = UserFactory.create(), UserFactory.create()
    with lock_held_until_waited_on(
        lambda: expert_calendar_lock(expert, SLOT, SLOT + dt.timedelta(hours=1)), waiters=1
    ) as held:
        other_hour = services.booking_reserve(later, offering, SLOT + dt.timedelta(hours=3))
        # Had it waited on the held hour, the holder would have seen it and let go.
        assert not held.seen
        outcomes = race([lambda: services.booking_reserve(same, offering, SLOT)])
    assert held.seen, "the booking of the held hour never waited"
    assert list(outcomes) == ["ok"]
    assert Room.objects.get(pk=other_hour.room_id).starts_at == SLOT + dt.timedelta(hours=3)
    assert Seat.objects.filter(client=same, room__starts_at=SLOT).exists()


@pytest.mark.django_db(transaction=True)
def test_a_range_across_an_hour_boundary_queues_behind_either_hour() -> None:
    """A range spanning two hours takes both, in ascending order: it waits for a holder of
    the second hour as for one of the first."""
    from rooms.tests.factories import expert_create

    expert = expert_create(time_zone="UTC")
    start = SLOT + dt.timedelta(minutes=30)  # 10:30–11:30 touches 10:00 and 11:00
    entered = threading.Event()

    def lock_range() -> None:
        try:
            with transaction.atomic():
                expert_calendar_lock(expert, start, start + dt.timedelta(hours=1))
                entered.set()
        finally:
            connection.close()

    with lock_held_until_waited_on(
        lambda: expert_calendar_lock(
            expert, SLOT + dt.timedelta(hours=1), SLOT + dt.timedelta(hours=2)
        ),
        waiters=1,
    ) as held:
        worker = threading.Thread(target=lock_range)
        worker.start()
        worker.join(timeout=60)
    assert held.seen, "the range never waited for its second hour"
    assert entered.is_set()


def test_both_confirmations_go_in_one_task_and_one_failing_does_not_hold_the_other(
    offering: Offering, monkeypatch: pytest.MonkeyPatch, mailoutbox: list[Any]
) -> None:
    from accounts.tasks import email_send_many_task

    client = UserFactory.create()
    seat = services.booking_reserve(client, offering, SLOT)
    services.seat_confirm(seat.pk)
    ids = list(OutboundEmail.objects.order_by("pk").values_list("pk", flat=True))
    send = EmailMultiAlternatives.send

    def mail_server(message: EmailMultiAlternatives, fail_silently: bool = False) -> int:
        if message.to == [client.email]:
            raise ConnectionRefusedError("the mail server refused the client's message")
        return send(message, fail_silently)

    monkeypatch.setattr(EmailMultiAlternatives, "send", mail_server)
    with pytest.raises(OSError, match="refused"):
        email_send_many_task(ids)  # raised after trying both: Celery retries the task
    assert [message.to for message in mailoutbox] == [[offering.expert.email]]
    unsent = OutboundEmail.objects.get(sent_at__isnull=True)
    assert unsent.to == client.email and unsent.attempts == 1

    monkeypatch.setattr(EmailMultiAlternatives, "send", send)
    assert email_send_many_task(ids) == 1  # the retry sends only what is still unsent
    assert [message.to for message in mailoutbox][1:] == [[client.email]]


def test_admin_says_a_confirmation_is_written_when_sent_then_shows_what_was_sent(
    offering: Offering, client: Client
) -> None:
    from accounts.tests.factories import StaffFactory, totp_enable
    from accounts.tests.helpers import login_with_mfa

    seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
    services.seat_confirm(seat.pk)
    email = OutboundEmail.objects.get(key=f"booking-confirmed:{seat.pk}")
    staff = StaffFactory.create()
    login_with_mfa(client, staff, totp_enable(staff))
    url = f"/admin/accounts/outboundemail/{email.pk}/change/"

    assert b"Not written yet: it is rendered when it is sent" in client.get(url).content
    assert accounts_services.email_send(email.pk)
    page = client.get(url).content.decode()
    assert "Not written yet" not in page
    assert "Wednesday 2 December 2026" in page
