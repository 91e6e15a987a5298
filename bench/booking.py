"""Booking throughput and latency on PostgreSQL at 1, 8 and 32 concurrent clients.

One booking is what a client and the payment seam do for a private slot:
``rooms.services.booking_reserve`` (policy checks, the payment, the overlap check under the
calendar's hour lock, a room, a seat, events) then ``rooms.services.seat_confirm`` (row lock,
transition, event, two emails written to the outbox, to be rendered with their calendar
invitations when sent), timed end to end. Each concurrent client is a thread that,
like a request in a server process, takes a connection from the process's pool for each
operation and returns it after (the pool is the product's, `DATABASE_POOL_MAX`; 32 clients
queue on it as 32 concurrent requests would). The threads share one interpreter and its GIL,
so the figures are those of one process, not of a fleet: past a few clients, Python time per
booking, not PostgreSQL, sets the throughput.

Scenarios, each at every concurrency level, from the same empty tables:

- ``baseline``: the floor under any booking, measured in the same run because machines are
  noisy: two committed transactions (a booking commits twice), each ``SELECT 1`` and an INSERT
  of a tiny row, five times as many operations as bookings. Every other row shows its p50 as a
  ratio of the baseline p50 at the same level.
- ``booking``: every client books its own pre-assigned free slots, so nothing collides.
- ``contended`` (8 and 32 clients): in lockstep rounds all clients try to book the same slot;
  one gets it (and confirms it), the others get the "this slot was just taken" answer with
  the nearest free slots, which is an expected outcome, not an error (anything else is, such
  as PostgreSQL's "deadlock detected" between two losers checking the exclusion constraint
  that the service lets through as a crash). ``by constraint`` counts
  the races that only PostgreSQL's exclusion constraint decided (the losers passed the
  service's own overlap check before the winner committed). Throughput there includes the
  waits between rounds.

After each scenario the bench checks what it booked against the database (one live room and
one confirmed seat per success); a mismatch counts as an error.

    .venv/bin/python bench/booking.py [--json] [--bookings N]

The database comes from ``DATABASE_URL`` and must be PostgreSQL. The bench never writes to it:
it creates a throwaway ``test_<name>_bench`` database next to it with Django's test-database
machinery (the role needs CREATEDB), migrates it, and drops it at the end. Celery tasks the
booking queues after commit (the confirmation emails) go to an in-memory broker, so no worker
ever sees them: a worker on the real broker would look their ids up in the real database.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from datetime import time as clock
from typing import TYPE_CHECKING

from _database import BenchError, django_setup, postgres_url_check, throwaway_database

if TYPE_CHECKING:
    from accounts.models import User
    from rooms.models import Offering

LEVELS = (1, 8, 32)
DEFAULT_BOOKINGS = 200
MIN_BOOKINGS = 100  # fewer make p99 the maximum
MAX_BOOKINGS = 10_000  # about 105 days of 15-minute slots: inside the offering's horizon
WARMUP_BOOKINGS = 10
# A baseline operation is some 30 times cheaper than a booking: more of them keep its window
# on the clock from being a fraction of a second that one burst of other load can spoil.
BASELINE_OPS_FACTOR = 5
SLOT_MINUTES = 15
HORIZON_DAYS = 365
# A worker that cannot reach the start (or the next round) within this time aborts the run.
BARRIER_TIMEOUT_S = 60.0
# Bounds a scenario whose database hangs rather than answers.
SCENARIO_TIMEOUT_S = 60.0
MAX_ERROR_MESSAGES = 5

OK = "ok"
TAKEN = "taken"
TAKEN_BY_CONSTRAINT = "taken_by_constraint"

# A job does one measured operation and says how it ended (OK, TAKEN, TAKEN_BY_CONSTRAINT);
# an exception is an error.
Job = Callable[[], str]


@dataclass(frozen=True)
class Result:
    scenario: str
    clients: int
    ops: int
    ok: int
    taken: int
    taken_by_constraint: int
    errors: int
    seconds: float
    ops_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    p50_ratio_to_baseline: float | None = None


@dataclass
class WorkerLog:
    latencies_ms: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    job_errors: int = 0
    # The worker itself failed (no connection, a broken barrier).
    failed: bool = False
    messages: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: list[list[Job]]  # one list per client
    lockstep: bool
    # Slots that must end up booked exactly once (contended), or None to check only that the
    # database agrees with the successes counted.
    slots_to_win: int | None = None


@dataclass(frozen=True)
class Workload:
    offering: Offering
    clients: list[User]
    slots: list[datetime]


class ErrorLogCounter(logging.Handler):
    """Collects logged errors: an on_commit hook that fails (robust=True) only logs."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"logged by {record.name}: {record.getMessage()}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- Database -------------------------------------------------------------------------------


def summary(results: list[Result]) -> dict[str, float]:
    """The figures the issues name, under their keys; one a run did not measure is left out
    (numbers only)."""
    figures: dict[str, float | None] = {}
    for r in results:
        if (r.scenario, r.clients) == ("booking", 1):
            figures["p50_ratio_1_client"] = r.p50_ratio_to_baseline
        if (r.scenario, r.clients) == ("booking", 32):
            figures["ops_per_s_32_clients"] = r.ops_per_s
    errors = [r.errors for r in results if r.clients == 32 and r.scenario != "baseline"]
    if errors:
        figures["errors_32_clients"] = sum(errors)
    return {key: value for key, value in figures.items() if value is not None}


def bench_django_setup() -> None:
    # The bench must not publish the confirmation emails' tasks to a real broker (see above).
    os.environ["CELERY_BROKER_URL"] = "memory://"
    # The pool is left as the product configures it: every client returns its connection
    # after each operation (`workers_run`), so 32 clients never need 32 connections.
    django_setup()
    # The memory broker has no host by design; kombu warns about that on every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)


def pool_max() -> int | None:
    """The size of the process's connection pool the clients share (None: no pool)."""
    from django.db import connection

    pool = connection.settings_dict.get("OPTIONS", {}).get("pool")
    return int(pool["max_size"]) if isinstance(pool, dict) else None


def workload_create(client_count: int, slot_count: int) -> Workload:
    """An approved expert free all day every day, a 15-minute offering, verified clients,
    the free slots they will book, and the baseline's table."""
    from allauth.account.models import EmailAddress
    from django.db import connection
    from django.utils import timezone

    from accounts.models import User
    from rooms import selectors
    from rooms.tests.factories import OfferingFactory, expert_create, weekdays_available

    expert = expert_create(time_zone="UTC")
    weekdays_available(expert, start=clock(0), end=clock(23, 59))
    offering = OfferingFactory.create(
        expert=expert,
        title="Bench session",
        length_minutes=SLOT_MINUTES,
        notice_minutes=0,
        horizon_days=HORIZON_DAYS,
    )
    # Built directly rather than with UserFactory: hashing a password per client would take
    # longer than the bench.
    clients = [
        User(email=f"client{i}@bench.test", display_name=f"Client {i}", time_zone="UTC")
        for i in range(client_count)
    ]
    for client in clients:
        client.set_unusable_password()
    User.objects.bulk_create(clients)
    EmailAddress.objects.bulk_create(
        EmailAddress(user=client, email=client.email, primary=True, verified=True)
        for client in clients
    )
    # Slots as a client would see them, from tomorrow on, so none passes during the run.
    first = (timezone.now() + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    days = slot_count * SLOT_MINUTES // (24 * 60) + 2
    slots = [
        slot.starts_at
        for slot in selectors.offering_slots(offering, first, first + timedelta(days=days))
    ][:slot_count]
    if len(slots) < slot_count:
        raise BenchError(f"the offering has {len(slots)} free slots, the bench needs {slot_count}")
    # The baseline's tiny rows: a table of the bench's own, in the bench's own database.
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, worker integer NOT NULL,"
            " created_at timestamptz NOT NULL DEFAULT now())"
        )
    # offering.expert is the instance given to the factory: the worker threads share that
    # cached object instead of racing to load it.
    return Workload(offering, clients, slots)


def bookings_clear() -> None:
    """Every scenario starts from empty booking tables (and reuses the same slots)."""
    from django.db import connection, transaction

    from accounts.models import OutboundEmail
    from rooms.models import Room, RoomEvent, Seat

    with transaction.atomic():
        OutboundEmail.objects.all().delete()
        with connection.cursor() as cursor:
            # The room history is append-only through the ORM; the bench's throwaway database
            # empties it with SQL.
            cursor.execute(f"TRUNCATE {RoomEvent._meta.db_table}")
            cursor.execute("TRUNCATE bench_baseline")
        Seat.objects.all().delete()
        Room.objects.all().delete()


def bookings_check(expected: int) -> list[str]:
    """What the database holds after a scenario that reported `expected` successes."""
    from rooms.models import Room, RoomState, Seat, SeatState

    live_rooms = Room.objects.exclude(state=RoomState.CANCELED).count()
    confirmed = Seat.objects.filter(state=SeatState.CONFIRMED).count()
    if live_rooms == confirmed == expected:
        return []
    return [
        f"{expected} bookings succeeded but the database holds {live_rooms} live rooms "
        f"and {confirmed} confirmed seats"
    ]


# --- Jobs -----------------------------------------------------------------------------------


def baseline_job(worker: int) -> Job:
    from django.db import connection, transaction

    def job() -> str:
        # `connection` is the calling thread's own.
        for _ in range(2):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.execute(
                    "INSERT INTO bench_baseline (worker) VALUES (%s)",
                    [worker],
                )
        return OK

    return job


def booking_job(client: User, offering: Offering, slot: datetime) -> Job:
    from django.db import IntegrityError

    from rooms import services
    from rooms.errors import SlotTaken

    def job() -> str:
        try:
            seat = services.booking_reserve(client, offering, slot)
        except SlotTaken as taken:
            # The service raises "taken" from inside its `except IntegrityError` (then again
            # with the alternatives), so the chain of contexts tells which guard decided.
            context: BaseException | None = taken
            while context is not None:
                if isinstance(context, IntegrityError):
                    return TAKEN_BY_CONSTRAINT
                context = context.__context__
            return TAKEN
        services.seat_confirm(seat.pk)
        return OK

    return job


# --- Running --------------------------------------------------------------------------------


def workers_run(jobs: list[list[Job]], *, lockstep: bool) -> tuple[list[WorkerLog], float]:
    """Run each list of jobs in a thread of its own; returns the logs and the wall time.

    The clock starts once every thread has connected. With `lockstep`, all threads start job
    i together (job lists must be the same length); the wait is not part of any latency.
    """
    from django.db import connection

    count = len(jobs)
    start = threading.Barrier(count + 1, timeout=BARRIER_TIMEOUT_S)
    step = threading.Barrier(count, timeout=BARRIER_TIMEOUT_S) if lockstep else None
    logs = [WorkerLog() for _ in range(count)]

    def work(index: int) -> None:
        log = logs[index]
        try:
            # Fills the pool before the clock starts (a new connection costs more than a
            # booking); returned at once, so the threads past the pool's size get theirs too.
            connection.ensure_connection()
            connection.close()
            start.wait()
            for job in jobs[index]:
                if step is not None:
                    step.wait()
                began = time.perf_counter()
                try:
                    outcome = job()
                except Exception as error:
                    log.job_errors += 1
                    log.messages.append(f"{type(error).__name__}: {error}")
                    continue
                finally:
                    # Back to the pool, as at the end of a request (Django's request_finished)
                    # or of a consumer's database call; the next job takes one again.
                    connection.close()
                log.latencies_ms.append((time.perf_counter() - began) * 1000)
                log.outcomes[outcome] += 1
        except threading.BrokenBarrierError:
            log.failed = True
            log.messages.append("another worker failed; this one stopped")
        except Exception as error:
            log.failed = True
            log.messages.append(f"worker failed: {type(error).__name__}: {error}")
            # Release everyone waiting for this thread instead of letting them time out.
            start.abort()
            if step is not None:
                step.abort()
        finally:
            connection.close()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"bench-client-{i}", daemon=True)
        for i in range(count)
    ]
    gc.collect()
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    began = time.perf_counter()
    deadline = began + SCENARIO_TIMEOUT_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.perf_counter()))
    elapsed = time.perf_counter() - began
    stuck = sum(thread.is_alive() for thread in threads)
    if stuck:
        # Their connections would keep the next scenario's tables and the throwaway database
        # busy; nothing after this could be trusted.
        raise BenchError(
            f"{stuck} clients still busy after {SCENARIO_TIMEOUT_S:.0f} s; is PostgreSQL hanging?"
        )
    return logs, elapsed


def result_from(
    scenario: str, clients: int, logs: list[WorkerLog], elapsed: float, problems: list[str]
) -> tuple[Result, list[str]]:
    """The figures of one scenario, and its error messages (each at most once, a few)."""
    latencies = [ms for log in logs for ms in log.latencies_ms]
    outcomes: Counter[str] = sum((log.outcomes for log in logs), Counter())
    job_errors = sum(log.job_errors for log in logs)
    ops = len(latencies) + job_errors
    p50: float | None = None
    p99: float | None = None
    if len(latencies) >= 2:
        cuts = statistics.quantiles(latencies, n=100, method="inclusive")
        p50, p99 = round(cuts[49], 3), round(cuts[98], 3)
    result = Result(
        scenario=scenario,
        clients=clients,
        ops=ops,
        ok=outcomes[OK],
        taken=outcomes[TAKEN] + outcomes[TAKEN_BY_CONSTRAINT],
        taken_by_constraint=outcomes[TAKEN_BY_CONSTRAINT],
        errors=job_errors + sum(log.failed for log in logs) + len(problems),
        seconds=round(elapsed, 3),
        ops_per_s=round(ops / elapsed, 1) if elapsed > 0 else 0.0,
        p50_ms=p50,
        p99_ms=p99,
    )
    # PostgreSQL's messages differ only in process and transaction ids from one occurrence to
    # the next: group them by their first line, show the first of each on one line.
    first_seen: dict[str, str] = {}
    times: Counter[str] = Counter()
    for message in [m for log in logs for m in log.messages] + problems:
        kind = message.splitlines()[0]
        first_seen.setdefault(kind, " ".join(message.split()))
        times[kind] += 1
    shown = [
        f"{scenario} x{clients}: {text}" + (f" ({times[kind]} times)" if times[kind] > 1 else "")
        for kind, text in list(first_seen.items())[:MAX_ERROR_MESSAGES]
    ]
    if len(first_seen) > MAX_ERROR_MESSAGES:
        more = len(first_seen) - MAX_ERROR_MESSAGES
        shown.append(f"{scenario} x{clients}: … and {more} other kinds of error")
    return result, shown


def deal(items: list[datetime], hands: int) -> list[list[datetime]]:
    """Disjoint shares of `items`, round robin, so no two clients ever want the same slot."""
    return [items[i::hands] for i in range(hands)]


def split(total: int, hands: int) -> list[int]:
    """`total` operations shared as evenly as `deal` shares slots."""
    return [len(range(i, total, hands)) for i in range(hands)]


def scenarios_at(level: int, workload: Workload, bookings: int) -> list[Scenario]:
    offering, clients = workload.offering, workload.clients
    shares = deal(workload.slots[:bookings], level)
    scenarios = [
        Scenario(
            "baseline",
            [
                [baseline_job(i)] * count
                for i, count in enumerate(split(bookings * BASELINE_OPS_FACTOR, level))
            ],
            lockstep=False,
        ),
        Scenario(
            "booking",
            [
                [booking_job(clients[i], offering, slot) for slot in share]
                for i, share in enumerate(shares)
            ],
            lockstep=False,
        ),
    ]
    if level > 1:
        # About as many attempts as the other rows: `bookings // level` rounds of `level`.
        contested = workload.slots[: contended_rounds(level, bookings)]
        scenarios.append(
            Scenario(
                "contended",
                [
                    [booking_job(clients[i], offering, slot) for slot in contested]
                    for i in range(level)
                ],
                lockstep=True,
                slots_to_win=len(contested),
            )
        )
    return scenarios


def contended_rounds(level: int, bookings: int) -> int:
    return max(1, bookings // level)


def run(bookings: int) -> tuple[list[Result], list[str]]:
    from rooms import services

    workload = workload_create(max(LEVELS), max(bookings, WARMUP_BOOKINGS))

    # Imports, template compilation and first queries happen here, not in the first row.
    progress(f"warming up: {WARMUP_BOOKINGS} bookings")
    for slot in workload.slots[:WARMUP_BOOKINGS]:
        seat = services.booking_reserve(workload.clients[0], workload.offering, slot)
        services.seat_confirm(seat.pk)
        baseline_job(0)()

    results: list[Result] = []
    errors: list[str] = []
    for level in LEVELS:
        baseline_p50: float | None = None
        for scenario in scenarios_at(level, workload, bookings):
            bookings_clear()
            ops = sum(len(jobs) for jobs in scenario.jobs)
            progress(f"measuring {scenario.name}: {ops} ops by {level} clients")
            logs, elapsed = workers_run(scenario.jobs, lockstep=scenario.lockstep)
            won = sum(log.outcomes[OK] for log in logs)
            problems: list[str] = []
            if scenario.name != "baseline":
                problems += bookings_check(won)
            if scenario.slots_to_win is not None and won != scenario.slots_to_win:
                problems.append(
                    f"{scenario.slots_to_win} contested slots but {won} bookings succeeded"
                )
            result, messages = result_from(scenario.name, level, logs, elapsed, problems)
            if scenario.name == "baseline":
                baseline_p50 = result.p50_ms
            elif baseline_p50 and result.p50_ms is not None:
                ratio = round(result.p50_ms / baseline_p50, 2)
                result = replace(result, p50_ratio_to_baseline=ratio)
            results.append(result)
            errors += messages
    bookings_clear()
    return results, errors


# --- Output ---------------------------------------------------------------------------------


def format_table(results: list[Result]) -> str:
    header = (
        "scenario",
        "clients",
        "ops",
        "ok",
        "taken",
        "by constraint",
        "errors",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p50 ratio",
    )

    def number(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        (
            r.scenario,
            str(r.clients),
            str(r.ops),
            str(r.ok),
            str(r.taken),
            str(r.taken_by_constraint),
            str(r.errors),
            f"{r.ops_per_s:,.1f}",
            number(r.p50_ms, ".2f"),
            number(r.p99_ms, ".2f"),
            "-" if r.p50_ratio_to_baseline is None else f"{r.p50_ratio_to_baseline:.2f}x",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def booking_count(text: str) -> int:
    value = int(text)
    if not MIN_BOOKINGS <= value <= MAX_BOOKINGS:
        raise argparse.ArgumentTypeError(f"must be between {MIN_BOOKINGS} and {MAX_BOOKINGS}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--bookings",
        type=booking_count,
        default=DEFAULT_BOOKINGS,
        help=f"measured bookings per scenario and level (default {DEFAULT_BOOKINGS})",
    )
    args = parser.parse_args()

    logged = ErrorLogCounter()
    try:
        postgres_url_check()
        bench_django_setup()
        # After setup: configuring logging replaces the root logger's handlers.
        logging.getLogger().addHandler(logged)
        with throwaway_database("bench", progress):
            results, errors = run(args.bookings)
    except BenchError as error:
        print(f"booking: {error}", file=sys.stderr)
        return 2
    errors += logged.messages[:MAX_ERROR_MESSAGES]

    pool = pool_max()
    if args.json:
        report = {
            "summary": summary(results),
            "bench": "booking",
            "database_pool_max": pool,
            "bookings": args.bookings,
            "warmup": WARMUP_BOOKINGS,
            "baseline_ops_per_booking": BASELINE_OPS_FACTOR,
            "levels": list(LEVELS),
            "results": [asdict(r) for r in results],
            "errors": errors,
        }
        print(json.dumps(report))
    else:
        print(
            f"booking = booking_reserve + seat_confirm on PostgreSQL, {args.bookings} per row; "
            "baseline = 2 transactions of SELECT 1 + INSERT; p50 ratio = p50 / baseline p50; "
            f"connection pool of {pool} per process"
        )
        print(format_table(results))
    for message in errors:
        print(f"booking: {message}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
