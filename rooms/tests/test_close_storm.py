"""The close storm (issue 18): many rooms due at the same moment, closed by two real Celery
workers; what one close and one capture cost in queries; a sweep's batch of closes handing its
captures to the workers in one message, and a batch of captures its receipts."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts import services as accounts_services
from accounts import tasks as accounts_tasks
from accounts.models import OutboundEmail
from billing import services as billing
from billing import tasks as billing_tasks
from billing.models import CommandState, PaymentCommand, PaymentEvent, Settlement
from billing.services import commands as billing_commands
from config.celery import app as celery_app
from rooms import services
from rooms.models import Room, RoomState
from rooms.services import room_state
from rooms.services.room_state import CLOSE_BATCH
from rooms.tasks import rooms_close_due
from rooms.tests.close_storm import (
    WORKER_APPLICATION_NAME,
    Outcome,
    Storm,
    broker_purge,
    closes_read,
    storm_check,
    storm_rooms_create,
    storm_run,
    workers_running,
)

# More than two sweeps' batches: the sweeps hand batches to each other.
STORM_ROOMS = 3 * CLOSE_BATCH


def _quiet(message: str) -> None:
    pass


@pytest.mark.django_db(transaction=True)
def test_two_workers_close_a_storm_of_rooms_each_once_and_capture_each_seat_once(
    tmp_path: Path,
) -> None:
    due_at = timezone.now() + dt.timedelta(seconds=30)
    storm = storm_rooms_create(STORM_ROOMS, due_at=due_at, progress=_quiet)
    broker_purge()
    # The sweeps go to the workers through the broker, not inline as elsewhere in the suite.
    celery_app.conf.task_always_eager = False
    try:
        # Several sweeps at once, and again every second while the closes go on: the ways one
        # room could be closed twice or missed.
        with workers_running(2, tmp_path) as timings:
            outcome = storm_run(storm, timings, timeout_s=90, sweep_every_s=1.0, sweeps_at_once=3)
            # And every room once more in a batch delivered again after the storm (a broker
            # redelivers a message whose worker died before acknowledging it).
            calls = closes_read(timings, storm, outcome)
            rooms_close_due.delay(storm.room_ids)
            for _ in range(600):
                if closes_read(timings, storm, outcome) >= calls + STORM_ROOMS:
                    break
                time.sleep(0.1)
            again = closes_read(timings, storm, outcome) - calls
    finally:
        celery_app.conf.task_always_eager = True
    assert storm_check(storm) == []
    assert not outcome.timed_out, outcome
    assert again == STORM_ROOMS, "the batch delivered again did not run, or its closes failed"
    # Both workers closed rooms, and no room was closed by two closes.
    assert outcome.closes_per_room == dict.fromkeys(storm.room_ids, 1)
    assert len(outcome.closers) == 2, outcome.closers


def _closes_in_tasks(timings: Path, storm: Storm, outcome: Outcome, room_ids: list[int]) -> None:
    """Each room closed by a task of its own; back once the worker has recorded them all."""
    for room_id in room_ids:
        rooms_close_due.delay([room_id])
    for _ in range(600):
        if outcome.closes_per_room.keys() >= set(room_ids):
            return
        time.sleep(0.1)
        closes_read(timings, storm, outcome)
    raise AssertionError(f"closed: {sorted(outcome.closes_per_room)}, asked: {room_ids}")


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_task_after_task_on_the_database_connections_it_has(tmp_path: Path) -> None:
    """Celery's Django fixup closed a prefork child's whole database pool around every task
    (celery/celery#10554): each task connected to PostgreSQL anew, and the first close of a
    sweep's batch took 33 ms where the others took 13. One room per task here, so each close
    is a task of its own."""
    rooms = 12
    storm = storm_rooms_create(rooms, due_at=timezone.now(), progress=_quiet)
    broker_purge()
    celery_app.conf.task_always_eager = False
    try:
        with workers_running(1, tmp_path) as timings:
            outcome = Outcome(rooms=rooms)
            _closes_in_tasks(timings, storm, outcome, storm.room_ids)
    finally:
        celery_app.conf.task_always_eager = True
    assert outcome.closes_per_room == dict.fromkeys(storm.room_ids, 1)
    # Twelve connections before, one a task; now the pool's few (2 to 3 seen).
    (backends,) = outcome.backends.values()
    assert len(backends) <= rooms // 4, f"{rooms} tasks ran on {len(backends)} connections"


@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_database_connections_died_between_tasks_runs_the_next_on_new_ones(
    tmp_path: Path,
) -> None:
    """The pool a worker now keeps from task to task (above) holds connections that can die
    while it waits: PostgreSQL restarted, or an administrator ended them. The next task must
    not get a dead one."""
    storm = storm_rooms_create(6, due_at=timezone.now(), progress=_quiet)
    before, after = storm.room_ids[:3], storm.room_ids[3:]
    broker_purge()
    celery_app.conf.task_always_eager = False
    try:
        with workers_running(1, tmp_path) as timings:
            outcome = Outcome(rooms=len(storm.room_ids))
            _closes_in_tasks(timings, storm, outcome, before)
            (kept,) = outcome.backends.values()
            # Every connection of the worker's pool, as a restart of PostgreSQL would.
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = %s",
                    [WORKER_APPLICATION_NAME],
                )
                assert cursor.fetchone()[0] >= len(kept)
            _closes_in_tasks(timings, storm, outcome, after)
    finally:
        celery_app.conf.task_always_eager = True
    assert outcome.closes_per_room == dict.fromkeys(storm.room_ids, 1)
    (used,) = outcome.backends.values()
    assert used - kept, "the tasks after ran on no new connection"


@pytest.mark.django_db
def test_a_room_close_takes_a_fixed_number_of_queries_and_a_second_close_changes_nothing() -> None:
    storm = storm_rooms_create(1, due_at=timezone.now(), progress=_quiet)
    (room_id,) = storm.room_ids
    with CaptureQueriesContext(connection) as queries:
        room, closed = services.room_close_if_due(room_id)
    assert closed
    # The payment found and locked with its settlement in one query; the room; the seat; the
    # presences and the media links each ended and read back in one statement; the settlement,
    # the capture and their two events in one; the room's state and its two events in one.
    # (23 before issue 18; 10 while each write was its own statement.)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 7, "\n".join(statements)
    assert services.room_close(room_id, reason="ended_by_expert") == room
    assert Settlement.objects.filter(payment_id__in=storm.payment_ids).count() == 1
    assert PaymentCommand.objects.filter(payment_id__in=storm.payment_ids).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_sweep_skips_a_room_another_sweep_is_closing_instead_of_waiting_for_it() -> None:
    storm = storm_rooms_create(2, due_at=timezone.now(), progress=_quiet)
    held, other = storm.room_ids
    claimed, release = threading.Event(), threading.Event()

    def other_sweep() -> None:
        # Another worker's sweep, in the middle of closing `held`.
        try:
            with transaction.atomic():
                assert room_state._sweep_claim(held)
                claimed.set()
                release.wait(30)
        finally:
            connection.close()

    thread = threading.Thread(target=other_sweep)
    thread.start()
    try:
        assert claimed.wait(30)
        began = time.monotonic()
        done = services.rooms_close_due([held, other])
        waited = time.monotonic() - began
    finally:
        release.set()
        thread.join(30)
    assert done == {"closed": 1, "failed": 0}
    assert waited < 10, "the sweep queued behind the other one"
    assert Room.objects.get(pk=held).state == RoomState.LIVE
    assert Room.objects.get(pk=other).state == RoomState.CLOSED
    # The claim ends with the other sweep's transaction; the room is closed by the next sweep.
    assert services.rooms_close_due([held, other]) == {"closed": 1, "failed": 0}
    assert Room.objects.get(pk=held).state == RoomState.CLOSED


def _closed(count: int) -> list[int]:
    """`count` storm rooms closed by a sweep's batch; the ids of their capture commands."""
    storm = storm_rooms_create(count, due_at=timezone.now(), progress=_quiet)
    assert services.rooms_close_due(storm.room_ids)["closed"] == count
    return list(
        PaymentCommand.objects.filter(payment_id__in=storm.payment_ids)
        .order_by("pk")
        .values_list("pk", flat=True)
    )


@pytest.mark.django_db
def test_a_capture_takes_a_fixed_number_of_queries_and_renders_the_receipt_only_when_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, command_id = _closed(2)
    billing.command_execute(first)  # caches warm
    rendered: list[str] = []
    render = getattr(accounts_services, "render_to_string")  # noqa: B009 - not exported

    def counted(template: str, *args: Any, **kwargs: Any) -> str:
        rendered.append(template)
        return str(render(template, *args, **kwargs))

    monkeypatch.setattr(accounts_services, "render_to_string", counted)
    with CaptureQueriesContext(connection) as queries:
        assert billing.command_execute(command_id) == CommandState.SUCCEEDED
    # The lease and the command with its payment; the provider's own (the local provider's
    # key lock, intent, earlier answer, update and log: Stripe's HTTP call in production);
    # then the payment locked with both people, the command marked done, the payment, its
    # event and the receipt's row. (22 before issue 18: the receipt was built and rendered
    # here, under the payment's lock, and the command marked done twice.)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 12, "\n".join(statements)
    assert rendered == []
    command = PaymentCommand.objects.select_related("payment").get(pk=command_id)
    assert command.payment.state == "captured"
    assert (command.state, command.last_error, command.leased_until) == ("succeeded", "", None)
    email = OutboundEmail.objects.get(key=f"payment-{command.payment_id}-receipt")
    assert email.body == ""
    assert accounts_services.email_send(email.pk)
    assert rendered == ["billing/email/receipt.txt", "billing/email/receipt.html"]
    email.refresh_from_db()
    assert f"Receipt P-{command.payment_id:06d}" in email.subject
    assert "Charged:" in email.body
    # Sent again (a redelivered task): nothing more happens.
    assert billing.command_execute(command_id) == CommandState.SUCCEEDED
    assert PaymentEvent.objects.filter(payment_id=command.payment_id, kind="captured").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_closes_hands_its_captures_to_the_workers_in_one_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    storm = storm_rooms_create(3, due_at=timezone.now(), progress=_quiet)
    many: list[list[int]] = []
    one: list[int] = []
    monkeypatch.setattr(billing_tasks.commands_execute_task, "delay", many.append)
    monkeypatch.setattr(billing_tasks.command_execute_task, "delay", one.append)
    # Each close commits on its own; their commands leave together when the batch is done.
    assert services.rooms_close_due(storm.room_ids) == {"closed": 3, "failed": 0}
    commands = PaymentCommand.objects.filter(payment_id__in=storm.payment_ids)
    assert many == [sorted(commands.values_list("pk", flat=True))]
    assert one == []
    # A close outside a sweep's batch (the expert's end) still sends its own at once.
    storm = storm_rooms_create(1, due_at=timezone.now(), progress=_quiet, label="single")
    services.room_close(storm.room_ids[0], reason="ended_by_expert")
    assert one == list(
        PaymentCommand.objects.filter(payment_id__in=storm.payment_ids).values_list("pk", flat=True)
    )
    assert len(many) == 1


@pytest.mark.django_db(transaction=True)
def test_a_batch_of_captures_sends_each_once_goes_on_past_a_failure_and_queues_one_email_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The closes' commands wait in the outbox (no worker here); this test sends them.
    monkeypatch.setattr(billing_tasks.commands_execute_task, "delay", lambda ids: None)
    command_ids = _closed(3)
    emails: list[list[int]] = []
    monkeypatch.setattr(accounts_tasks.email_send_many_task, "delay", emails.append)
    execute = billing_commands.command_execute

    def failing_once(command_id: int) -> str:
        if command_id == command_ids[1] and not failed:
            failed.append(command_id)
            raise OperationalError("the connection dropped")
        return execute(command_id)

    failed: list[int] = []
    monkeypatch.setattr(billing_commands, "command_execute", failing_once)
    done = billing.commands_execute(command_ids)
    assert done == {"succeeded": 2, "error": 1}
    receipts = OutboundEmail.objects.filter(key__endswith="-receipt")
    assert emails == [sorted(receipts.values_list("pk", flat=True))]
    # The one that failed is left pending for the outbox sweep; the batch delivered again
    # sends it and nothing twice.
    assert billing.commands_execute(command_ids) == {"succeeded": 3}
    commands = PaymentCommand.objects.filter(pk__in=command_ids)
    assert set(commands.values_list("state", flat=True)) == {CommandState.SUCCEEDED}
    payments = commands.values_list("payment_id", flat=True)
    captured = PaymentEvent.objects.filter(payment_id__in=payments, kind="captured")
    assert captured.count() == 3
    assert receipts.count() == 3
