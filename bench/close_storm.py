"""Close storm on PostgreSQL: 1,000 rooms due at the same moment, closed by 2 Celery workers.

Each room is a private session with a confirmed seat paid through the local payment provider
(a hold placed by the card form) and a call's history: both sides in from the start, the expert
reconnecting once and the client twice, the media link following each time, reported by both
sides; half the rooms are priced fixed, half per minute. All end at the same moment. Two real
Celery worker processes of the project (prefork, concurrency 1, every queue, on the Redis
broker of ``REDIS_URL``) then get the sweep (``rooms.tasks.rooms_advance``) at that moment and
again every 10 s, as beat sends it, and the bench watches the database:

- ``all settled``: from the first sweep until every room is closed and its seat settled (both
  commit together);
- ``captures done``: until every capture command the closes wrote has run at the provider;
- ``settle`` p50 / p99: one room close (its transaction, commit, and what it sends after
  commit), as timed inside the workers during the storm.

``baseline``: 1,000 plain single-row UPDATEs on PostgreSQL, each its own transaction, from
this process in the same run, measured just before the storm (same machine, same moment). The
ratios compare the storm's figures with it. Before the storm a few rooms are closed the same
way so the workers' first tasks (connections, imports) are not in the figures.

After the storm the bench checks every room closed once at its paid end, one settlement (of
the expected amount) and one succeeded capture per seat, and their events; a mismatch is an
error.

    .venv/bin/python bench/close_storm.py [--json] [--rooms N]

The database comes from ``DATABASE_URL`` (PostgreSQL); the bench works in a throwaway
``test_<name>_storm`` database next to it, dropped at the end. The broker is ``REDIS_URL``'s
Redis database: its queues are emptied before the storm. The workers send receipt emails to
Django's dummy backend (the mail server is not measured).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from _database import BenchError, django_setup, postgres_url_check, throwaway_database
from _table import number, table

DEFAULT_ROOMS = 1000
MIN_ROOMS = 100  # fewer make p99 the maximum
MAX_ROOMS = 5000
WARMUP_ROOMS = 10
WORKERS = 2
STORM_TIMEOUT_S = 300.0
MAX_ERROR_MESSAGES = 5


@dataclass(frozen=True)
class Row:
    what: str
    count: int
    seconds: float | None
    p50_ms: float | None
    p99_ms: float | None
    # seconds / baseline seconds, or p50 / baseline p50 for a row without seconds
    ratio_to_baseline: float | None = None


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentiles(values: list[float]) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return round(cuts[49], 3), round(cuts[98], 3)


def bench_django_setup() -> None:
    url = os.environ.get("REDIS_URL", "")
    if not url.startswith("redis://"):
        raise BenchError(
            "REDIS_URL is not a Redis URL; the workers need a broker. Set it to a Redis database "
            "of your own (export REDIS_URL=redis://127.0.0.1:6379/N)."
        )
    os.environ.pop("CELERY_BROKER_URL", None)
    os.environ["CELERY_TASK_ALWAYS_EAGER"] = "0"
    django_setup()


def baseline(count: int) -> Row:
    """`count` single-row UPDATEs, each its own transaction (autocommit), timed one by one."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE bench_baseline (id integer PRIMARY KEY, n integer NOT NULL DEFAULT 0)"
        )
        cursor.execute("INSERT INTO bench_baseline (id) SELECT generate_series(1, %s)", [count])
        latencies = []
        began = time.perf_counter()
        for row in range(1, count + 1):
            start = time.perf_counter()
            cursor.execute("UPDATE bench_baseline SET n = n + 1 WHERE id = %s", [row])
            latencies.append((time.perf_counter() - start) * 1000)
        seconds = time.perf_counter() - began
    p50, p99 = percentiles(latencies)
    return Row("baseline: UPDATE one row", count, round(seconds, 3), p50, p99, 1.0)


def run(rooms: int, work_dir: Path) -> tuple[list[Row], dict[str, float], list[str]]:
    from django.utils import timezone

    from rooms.tests.close_storm import (
        broker_purge,
        storm_check,
        storm_rooms_create,
        storm_run,
        storm_shift,
        workers_running,
    )

    # The storm is built a day ahead (nothing of it is due while the workers warm up), then
    # moved to the present.
    later = timezone.now().replace(microsecond=0) + timedelta(days=1)
    progress(f"creating {rooms} rooms with paid seats and a call's history")
    storm = storm_rooms_create(rooms, due_at=later, progress=progress)
    progress(f"creating {WARMUP_ROOMS} warm-up rooms")
    warmup = storm_rooms_create(WARMUP_ROOMS, due_at=later, progress=progress, label="warmup")
    broker_purge()
    errors: list[str] = []
    progress(f"starting {WORKERS} Celery workers")
    with workers_running(WORKERS, work_dir) as timings:
        progress("warming up: closing the warm-up rooms")
        warmup = storm_shift(warmup, timezone.now())
        warm = storm_run(warmup, timings, timeout_s=60)
        if warm.timed_out:
            raise BenchError("the warm-up rooms were not all closed and captured in 60 s")
        progress(f"measuring the baseline: {rooms} single-row UPDATEs")
        base = baseline(rooms)
        # Due a moment from now.
        storm = storm_shift(storm, timezone.now() + timedelta(seconds=1))
        progress(f"storm: {rooms} rooms due at {storm.due_at:%H:%M:%S.%f}")
        outcome = storm_run(storm, timings, timeout_s=STORM_TIMEOUT_S)
    if outcome.timed_out:
        errors.append(f"the storm was not over after {STORM_TIMEOUT_S:.0f} s")
    errors += storm_check(storm)
    twice = sum(n > 1 for n in outcome.closes_per_room.values())
    if twice:
        errors.append(f"{twice} rooms closed by two closes")
    p50, p99 = percentiles(outcome.close_ms)
    settled = outcome.all_settled_s
    captured = outcome.captures_done_s

    def ratio(seconds: float | None) -> float | None:
        return round(seconds / base.seconds, 1) if seconds is not None and base.seconds else None

    rows = [
        base,
        Row(
            "storm: every room closed and settled",
            rooms,
            None if settled is None else round(settled, 3),
            p50,
            p99,
            ratio(settled),
        ),
        Row(
            "storm: every capture run",
            rooms,
            None if captured is None else round(captured, 3),
            None,
            None,
            ratio(captured),
        ),
        Row(
            "one close, p50 / baseline p50",
            len(outcome.close_ms),
            None,
            p50,
            p99,
            round(p50 / base.p50_ms, 1) if p50 is not None and base.p50_ms else None,
        ),
    ]
    summary: dict[str, float] = {"rooms": rooms}
    if settled is not None:
        summary["all_settled_s"] = round(settled, 3)
    if p99 is not None:
        summary["settle_p99_ms"] = p99
    if captured is not None:
        summary["captures_done_s"] = round(captured, 3)
    extra = {
        "sweeps": float(outcome.sweeps),
        "closing_workers": float(len(outcome.closers)),
    }
    return rows, {**summary, **{f"_{k}": v for k, v in extra.items()}}, errors


def format_table(rows: list[Row]) -> str:
    header = ("what", "count", "seconds", "p50 ms", "p99 ms", "ratio")
    return table(
        header,
        [
            (
                r.what,
                str(r.count),
                number(r.seconds, ".3f"),
                number(r.p50_ms, ".2f"),
                number(r.p99_ms, ".2f"),
                "-" if r.ratio_to_baseline is None else f"{r.ratio_to_baseline:.1f}x",
            )
            for r in rows
        ],
        left=1,
    )


def room_count(text: str) -> int:
    value = int(text)
    if not MIN_ROOMS <= value <= MAX_ROOMS:
        raise argparse.ArgumentTypeError(f"must be between {MIN_ROOMS} and {MAX_ROOMS}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--rooms",
        type=room_count,
        default=DEFAULT_ROOMS,
        help=f"rooms due at once (default {DEFAULT_ROOMS})",
    )
    args = parser.parse_args()
    try:
        postgres_url_check()
        bench_django_setup()
        # The workers log to their own files; the bench's own stderr is for progress.
        logging.getLogger("kombu").setLevel(logging.ERROR)
        with (
            tempfile.TemporaryDirectory(prefix="close-storm-") as work,
            throwaway_database("storm", progress),
        ):
            rows, figures, errors = run(args.rooms, Path(work))
    except BenchError as error:
        print(f"close_storm: {error}", file=sys.stderr)
        return 2
    load = os.getloadavg()
    summary = {k: v for k, v in figures.items() if not k.startswith("_")}
    if args.json:
        report = {
            "summary": summary,
            "bench": "close_storm",
            "rooms": args.rooms,
            "workers": WORKERS,
            "warmup_rooms": WARMUP_ROOMS,
            "sweeps_sent": figures.get("_sweeps"),
            "closing_workers": figures.get("_closing_workers"),
            "load_average": [round(x, 2) for x in load],
            "results": [asdict(r) for r in rows],
            "errors": errors,
        }
        print(json.dumps(report))
    else:
        print(
            f"close storm = {args.rooms} rooms due at once, closed by {WORKERS} Celery workers; "
            "baseline = single-row UPDATEs, one transaction each; ratio = seconds (or p50) / "
            "the baseline's"
        )
        print(format_table(rows))
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    for message in errors[:MAX_ERROR_MESSAGES]:
        print(f"close_storm: {message}", file=sys.stderr)
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
