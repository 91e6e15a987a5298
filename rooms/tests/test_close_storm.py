"""The close storm (issue 18): many rooms due at the same moment, closed by two real Celery
workers; and what one close costs in queries."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import PaymentCommand, Settlement
from config.celery import app as celery_app
from rooms import services
from rooms.models import Room, RoomState
from rooms.services import room_state
from rooms.services.room_state import CLOSE_BATCH
from rooms.tasks import rooms_close_due
from rooms.tests.close_storm import (
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


@pytest.mark.django_db
def test_a_room_close_takes_a_fixed_number_of_queries_and_a_second_close_changes_nothing() -> None:
    storm = storm_rooms_create(1, due_at=timezone.now(), progress=_quiet)
    (room_id,) = storm.room_ids
    with CaptureQueriesContext(connection) as queries:
        room, closed = services.room_close_if_due(room_id)
    assert closed
    # The payment found and locked with its settlement in one query; the room; the seat; the
    # presences and the media links each ended and read back in one statement; the settlement,
    # the capture and their two events; the room's state and its two events. (23 before.)
    statements = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 10, "\n".join(statements)
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
