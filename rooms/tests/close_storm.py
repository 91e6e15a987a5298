"""A close storm: many rooms, each with a confirmed seat paid through the local provider and a
call's history (a couple of reconnects on each side, media following), all due at the same
moment, closed by real Celery worker processes. The suite's small storm
(`test_close_storm.py`) and the bench (`bench/close_storm.py`) share it.

    python -m rooms.tests.close_storm --timings DIR --ready DIR -- <celery worker arguments>

runs one Celery worker of the project, as `celery -A config worker` does, that also writes how
long each room close it ran took (one JSON line per close, to a file of its process in
`--timings`) and touches a file in `--ready` once it takes tasks. The clock wraps the whole
close (its transaction, the commit and what is sent after it), nothing else is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LENGTH = timedelta(minutes=60)
FIXED_PRICE_MINOR = 12000
RATE_MINOR = 200
# What the history below bills: 3,433 s of both present with media up inside the booked hour
# (1,200 + 880 + 582 + 771), 58 started minutes; connected over a minute, so the fixed price
# is due in full.
BILLABLE_SECONDS = 3433
PER_MINUTE_CHARGE_MINOR = 58 * RATE_MINOR
WORKER_READY_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 30.0
WORKER_APPLICATION_NAME = "parley-storm-worker"


@dataclass(frozen=True)
class Storm:
    room_ids: list[int]
    payment_ids: list[int]
    # When every room is due: their paid end.
    due_at: datetime


@dataclass
class Outcome:
    """What a storm's run saw, in seconds from the trigger."""

    rooms: int
    all_settled_s: float | None = None
    captures_done_s: float | None = None
    close_ms: list[float] = field(default_factory=list)
    # Per room id, how many closes by a worker closed it (1 each, or something is wrong).
    closes_per_room: dict[int, int] = field(default_factory=dict)
    # The worker processes (pids) that closed rooms.
    closers: set[int] = field(default_factory=set)
    # Per worker process, the PostgreSQL backends (pids) its closes ran on.
    backends: dict[int, set[int]] = field(default_factory=dict)
    sweeps: int = 0
    timed_out: bool = False


def storm_rooms_create(
    count: int, *, due_at: datetime, progress: Callable[[str], None], label: str = "storm"
) -> Storm:
    """`count` private rooms of as many experts, each live with one confirmed seat paid through
    the local provider (a hold placed by the card form, as a client does), ending at `due_at`,
    with a call's history; half priced fixed, half per minute. Nothing is due before
    `due_at`; no worker is asked to do anything. `label` keeps the people of two storms apart."""
    from django.db import transaction

    from accounts.models import User
    from billing import services as billing
    from billing.gateways.local import TEST_CARD
    from rooms import broadcast, services
    from rooms.models import MediaLink, Presence, Pricing, Room, RoomKind, Seat, SeatState

    start = due_at - LENGTH
    # Booked days ahead as scheduled rooms, paid, then moved to the storm's hour.
    booked = start + timedelta(days=2)
    users = [
        User(email=f"{who}{i}@{label}.test", display_name=f"{who.title()} {i}", time_zone="UTC")
        for i in range(count)
        for who in ("expert", "client")
    ]
    for user in users:
        user.set_unusable_password()
    User.objects.bulk_create(users)
    experts, clients = users[0::2], users[1::2]
    rooms = Room.objects.bulk_create(
        Room(
            expert=expert,
            kind=RoomKind.PRIVATE,
            title="Architecture review",
            starts_at=booked,
            ends_at=booked + LENGTH,
            blocked_from=booked,
            blocked_until=booked + LENGTH,
            pricing=Pricing.FIXED if i % 2 == 0 else Pricing.PER_MINUTE,
            price_minor=FIXED_PRICE_MINOR if i % 2 == 0 else RATE_MINOR,
            currency="EUR",
            late_cancel_fee_percent=50,
            no_show_fee_percent=50,
        )
        for i, expert in enumerate(experts)
    )
    progress(f"paying {count} seats through the local provider")
    with transaction.atomic():
        payments = [
            billing.payment_open(
                payer=client,
                payee=room.expert,
                amount_minor=room.max_amount_minor,
                currency=room.currency,
                description=room.title,
                starts_at=room.starts_at,
            )
            for room, client in zip(rooms, clients, strict=True)
        ]
        seats = Seat.objects.bulk_create(
            Seat(
                room=room,
                client=client,
                state=SeatState.RESERVED,
                reserved_until=booked,
                payment=payment,
            )
            for room, client, payment in zip(rooms, clients, payments, strict=True)
        )
    with broadcast.batched():
        for payment in payments:
            billing.payment_local_card(payment.pk, card_number=TEST_CARD)
    confirmed = Seat.objects.filter(pk__in=[s.pk for s in seats], state=SeatState.CONFIRMED)
    if confirmed.count() != count:
        raise RuntimeError(f"{count} seats paid but {confirmed.count()} confirmed")

    progress(f"moving the {count} rooms to end at {due_at:%H:%M:%S} and going live")
    Room.objects.filter(pk__in=[r.pk for r in rooms]).update(
        starts_at=start, ends_at=due_at, blocked_from=start, blocked_until=due_at
    )
    with broadcast.batched():
        for room in rooms:
            services.room_open(room.pk, now=start - timedelta(minutes=10))
            services.room_mark_live(room.pk, at=start - timedelta(minutes=1))
    # The open connections go on beating until their room closes (sockets do; the storm has
    # none): a storm that outlasts the stale timeout must not find them silent and end them at
    # their last beat, before the paid end.
    heartbeat = due_at + timedelta(minutes=10)

    def at(seconds: int) -> datetime:
        """A moment of the call, in whole seconds from its booked start."""
        return start + timedelta(seconds=seconds)

    presences, links = [], []
    for room, client in zip(rooms, clients, strict=True):
        expert = room.expert
        for n, (user, opened, closed) in enumerate(
            [
                (expert, at(-180), at(1200)),
                (expert, at(1212), None),
                (client, at(-60), at(2100)),
                (client, at(2220), at(2820)),
                (client, at(2826), None),
            ]
        ):
            presences.append(
                Presence(
                    room=room,
                    user=user,
                    connection_id=f"storm-{room.pk}-{n}",
                    opened_at=opened,
                    last_heartbeat_at=closed or heartbeat,
                    closed_at=closed,
                    close_reason="dropped" if closed else "",
                )
            )
        for reporter in (expert, client):
            for began, ended in [
                (at(0), at(1200)),
                (at(1220), at(2100)),
                (at(2238), at(2820)),
                (at(2829), None),
            ]:
                links.append(
                    MediaLink(
                        room=room,
                        client=client,
                        reported_by=reporter,
                        started_at=began,
                        ended_at=ended,
                        candidate_type="host",
                    )
                )
    Presence.objects.bulk_create(presences)
    MediaLink.objects.bulk_create(links)
    return Storm([r.pk for r in rooms], [p.pk for p in payments], due_at)


def storm_shift(storm: Storm, due_at: datetime) -> Storm:
    """The same storm, every moment of its rooms and their history moved so that they are due
    at `due_at` (a bench warms its workers up first, then moves the storm to the present)."""
    from django.db.models import F

    from rooms.models import MediaLink, Presence, Room

    delta = due_at - storm.due_at
    Room.objects.filter(pk__in=storm.room_ids).update(
        starts_at=F("starts_at") + delta,
        ends_at=F("ends_at") + delta,
        blocked_from=F("blocked_from") + delta,
        blocked_until=F("blocked_until") + delta,
        opened_at=F("opened_at") + delta,
        live_at=F("live_at") + delta,
    )
    Presence.objects.filter(room_id__in=storm.room_ids).update(
        opened_at=F("opened_at") + delta,
        last_heartbeat_at=F("last_heartbeat_at") + delta,
        closed_at=F("closed_at") + delta,
    )
    MediaLink.objects.filter(room_id__in=storm.room_ids).update(
        started_at=F("started_at") + delta, ended_at=F("ended_at") + delta
    )
    return Storm(storm.room_ids, storm.payment_ids, due_at)


def storm_check(storm: Storm) -> list[str]:
    """What is wrong after the storm, if anything: every room closed once at its paid end, each
    seat settled once from the whole history and captured once, with the events of each."""
    from collections import Counter

    from billing.models import CommandKind, CommandState, PaymentCommand, PaymentEvent, Settlement
    from rooms.models import Pricing, Room, RoomEvent, RoomState

    problems = []
    count = len(storm.room_ids)
    rooms = Room.objects.filter(pk__in=storm.room_ids)
    states = Counter(rooms.values_list("state", "close_reason"))
    if states != {(RoomState.CLOSED, "time_limit"): count}:
        problems.append(f"rooms by state and reason: {dict(states)}")
    closes = Counter(
        RoomEvent.objects.filter(room__in=rooms, kind="closed").values_list("room_id", flat=True)
    )
    if closes != dict.fromkeys(storm.room_ids, 1):
        twice = sum(n > 1 for n in closes.values())
        problems.append(f"{count - len(closes)} rooms without a close, {twice} closed twice")
    settlements = Settlement.objects.filter(payment_id__in=storm.payment_ids)
    wrong = [
        (pricing, amount, billable)
        for pricing, amount, billable in settlements.values_list(
            "payment__seat__room__pricing", "amount_minor", "inputs__billable_seconds"
        )
        if billable != BILLABLE_SECONDS
        or amount != (FIXED_PRICE_MINOR if pricing == Pricing.FIXED else PER_MINUTE_CHARGE_MINOR)
    ]
    if settlements.count() != count or wrong:
        problems.append(f"{settlements.count()} settlements for {count} seats; wrong: {wrong[:3]}")
    commands = Counter(
        PaymentCommand.objects.filter(payment_id__in=storm.payment_ids).values_list("kind", "state")
    )
    if commands != {(CommandKind.CAPTURE, CommandState.SUCCEEDED): count}:
        problems.append(f"payment commands by kind and state: {dict(commands)}")
    events = Counter(
        PaymentEvent.objects.filter(payment_id__in=storm.payment_ids).values_list("kind", flat=True)
    )
    written = (events["settled"], events["capture_requested"], events["captured"])
    if written != (count, count, count):
        problems.append(f"payment events settled, capture_requested, captured: {written}")
    return problems


def database_url() -> str:
    """The database this process uses, for the workers to connect to."""
    from django.db import connection

    db = connection.settings_dict
    user = urllib.parse.quote(str(db["USER"]), safe="")
    password = urllib.parse.quote(str(db["PASSWORD"]), safe="")
    return f"postgres://{user}:{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def broker_purge() -> None:
    """Nothing queued before the storm (the setup's confirmation emails, an earlier run's
    leftovers) is left for the workers."""
    from config.celery import app

    app.control.purge()


@contextmanager
def workers_running(count: int, work_dir: Path) -> Iterator[Path]:
    """`count` Celery worker processes of the project (prefork, concurrency 1, every queue, as
    `make run` starts its one), on this process's database and broker; yields the folder of
    their close timings once all take tasks, and stops them (a warm shutdown, then a kill)."""
    timings, ready, logs = work_dir / "timings", work_dir / "ready", work_dir / "logs"
    for folder in (timings, ready, logs):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        DJANGO_SETTINGS_MODULE="config.settings",
        CELERY_TASK_ALWAYS_EAGER="0",
        # The receipts the captures queue are sent nowhere: the mail server is not measured.
        EMAIL_BACKEND="django.core.mail.backends.dummy.EmailBackend",
        # Their connections are told apart from this process's in pg_stat_activity.
        PGAPPNAME=WORKER_APPLICATION_NAME,
        PYTHONPATH=str(ROOT),
    )
    processes = []
    try:
        for n in range(count):
            log = (logs / f"w{n}.log").open("w")
            processes.append(
                subprocess.Popen(  # noqa: S603 - our own interpreter and module
                    [
                        sys.executable,
                        "-m",
                        "rooms.tests.close_storm",
                        "--timings",
                        str(timings),
                        "--ready",
                        str(ready),
                        "--",
                        "--concurrency=1",
                        "--queues=money,rooms,email",
                        "--loglevel=WARNING",
                        "--without-gossip",
                        "--without-mingle",
                        f"--hostname=storm{n}@%h",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while len(list(ready.iterdir())) < count:
            dead = [p for p in processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tails = "\n".join(path.read_text()[-2000:] for path in sorted(logs.iterdir()))
                raise RuntimeError(f"the Celery workers did not start:\n{tails}")
            time.sleep(0.05)
        yield timings
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def storm_run(
    storm: Storm,
    timings: Path,
    *,
    timeout_s: float,
    sweep_every_s: float = 10.0,
    sweeps_at_once: int = 1,
) -> Outcome:
    """At the rooms' due moment, ask for the sweep (`rooms_advance`, as beat does every 10 s,
    and again at that rate until done; `sweeps_at_once` of them each time, as when the rooms'
    own timers fire with beat's tick); watch the database until every room is closed and
    settled and every capture has run. Times count from that first sweep."""
    from django.db import connection

    from billing.models import CommandKind, CommandState, PaymentCommand, Settlement
    from rooms.models import Room, RoomState
    from rooms.tasks import rooms_advance

    rooms = Room.objects.filter(pk__in=storm.room_ids)
    settlements = Settlement.objects.filter(payment_id__in=storm.payment_ids)
    captures = PaymentCommand.objects.filter(
        payment_id__in=storm.payment_ids, kind=CommandKind.CAPTURE
    )
    wait = (storm.due_at - _now()).total_seconds()
    if wait > 0:
        time.sleep(wait)
    outcome = Outcome(rooms=len(storm.room_ids))
    began = time.monotonic()
    next_sweep = began
    deadline = began + timeout_s
    while True:
        now = time.monotonic()
        if now >= next_sweep:
            for _ in range(sweeps_at_once):
                rooms_advance.delay()
                outcome.sweeps += 1
            next_sweep += sweep_every_s
        if outcome.all_settled_s is None:
            closed = rooms.filter(state=RoomState.CLOSED).count()
            if closed == outcome.rooms and settlements.count() == outcome.rooms:
                outcome.all_settled_s = now - began
        if outcome.all_settled_s is not None:
            done = captures.filter(state=CommandState.SUCCEEDED).count()
            if done == captures.count() == settlements.filter(amount_minor__gt=0).count():
                outcome.captures_done_s = time.monotonic() - began
                break
        if now > deadline:
            outcome.timed_out = True
            break
        # Each poll is a fresh read: nothing of an earlier one is kept.
        connection.close()
        time.sleep(0.05)
    closes_read(timings, storm, outcome)
    return outcome


def closes_read(timings: Path, storm: Storm, outcome: Outcome) -> int:
    """Fill the outcome's closes from the workers' records of the storm's rooms (those that
    closed a room); returns how many closes of them ran, whether or not they closed one."""
    ours = set(storm.room_ids)
    outcome.close_ms, outcome.closes_per_room, outcome.closers = [], {}, set()
    outcome.backends = {}
    calls = 0
    for path in sorted(timings.iterdir()):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line the worker is writing right now
            if record["room"] not in ours:
                continue
            calls += 1
            outcome.backends.setdefault(int(path.stem), set()).add(record["backend"])
            if record["closed"]:
                outcome.closers.add(int(path.stem))
                outcome.close_ms.append(record["ms"])
                room = record["room"]
                outcome.closes_per_room[room] = outcome.closes_per_room.get(room, 0) + 1
    return calls


def _now() -> datetime:
    from django.utils import timezone

    return timezone.now()


# --- the worker process ---------------------------------------------------------------------


def _timed_closes(timings: Path) -> None:
    """Wrap the room close of this process (the pool's child inherits it) with a clock that
    writes one line per close to a file of the process that ran it."""
    from django.db import connection

    from rooms.services import room_state

    close = room_state._room_close
    files: dict[int, Any] = {}

    def timed(room_id: int, **kwargs: Any) -> Any:
        began = time.perf_counter()
        room, closed = close(room_id, **kwargs)
        ms = (time.perf_counter() - began) * 1000
        out = files.get(os.getpid())
        if out is None:
            out = files[os.getpid()] = (timings / f"{os.getpid()}.jsonl").open("a", buffering=1)
        backend = connection.connection.info.backend_pid if connection.connection else None
        record = {"room": room_id, "ms": ms, "closed": closed, "backend": backend}
        out.write(json.dumps(record) + "\n")
        return room, closed

    room_state._room_close = timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timings", type=Path, required=True)
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("celery", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from celery.signals import worker_ready

    from config.celery import app

    _timed_closes(args.timings)

    @worker_ready.connect
    def ready(**kwargs: Any) -> None:
        (args.ready / str(os.getpid())).touch()

    extra = [a for a in args.celery if a != "--"]
    app.worker_main(["worker", *extra])


if __name__ == "__main__":
    main()
