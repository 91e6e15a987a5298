"""Real concurrency for the race tests: actions released at once, each in its own thread with
its own database connection, and the proof that they really ran at the same time.

Releasing threads at a barrier is not proof: a busy machine may still run them one after the
other, and a test that passes that way would pass without the race. So a race test holds the
row its racers contend for (`lock_held_until_waited_on`) until PostgreSQL shows every racer's
session waiting on a lock, then lets go: at that instant all of them are inside their
transactions together. `race` also records when each action started and ended (a monotonic
clock, which time-machine does not freeze) so a test can check that the intervals overlap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from django.db import connection, transaction

from billing.errors import BillingError
from rooms.errors import RoomsError

# How long a holder waits for the racers to queue behind it. The loop counts polls rather
# than reading the clock, which time-machine may have frozen.
POLLS, POLL_SECONDS = 3000, 0.01


def racers_at_once(wanted: int) -> int:
    """How many of `wanted` racers can be inside the database at the same moment. One process
    gets at most the pool's `max_size` connections (settings: DATABASE_POOL_MAX); the test's
    own connection and the lock holder's take two of them. More racers than that queue on the
    pool first (each for at most its timeout), as the requests of one server process do."""
    pool = connection.settings_dict.get("OPTIONS", {}).get("pool")
    if not pool:
        return wanted
    size = int(pool.get("max_size", 0) if isinstance(pool, dict) else 0) or wanted + 2
    return min(wanted, size - 2)


def _refusals() -> tuple[type[Exception], ...]:
    """The domain errors a racer may be refused with; anything else is a crash."""
    from accounts.errors import AccountsError
    from moderation.services.errors import ModerationError

    return (RoomsError, BillingError, ModerationError, AccountsError)


class Raced(list[str]):
    """The outcomes ("ok", a refusal's message or "crashed: …"), in the order the actions were
    given, with each action's (start, end) on the monotonic clock."""

    spans: list[tuple[float, float]]

    def overlapped(self) -> bool:
        """Was there one instant at which every action had started and none had ended?"""
        return max(start for start, _ in self.spans) < min(end for _, end in self.spans)


def race(actions: list[Callable[[], object]]) -> Raced:
    """Run the actions in threads released together; collect "ok", a refusal's message, or
    "crashed: …" for anything else (a deadlock, a constraint the code did not expect)."""
    refusals = _refusals()
    barrier = threading.Barrier(len(actions))
    outcomes: list[str] = ["never ran"] * len(actions)
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(actions)

    def run(index: int, action: Callable[[], object]) -> None:
        start = time.perf_counter()
        try:
            barrier.wait()
            start = time.perf_counter()
            action()
            result = "ok"
        except refusals as error:
            result = str(error)
        except Exception as error:  # anything else is a bug the test must show
            result = f"crashed: {error!r}"
        finally:
            connection.close()
        spans[index] = (start, time.perf_counter())
        outcomes[index] = result

    threads = [
        threading.Thread(target=run, args=(index, action)) for index, action in enumerate(actions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    raced = Raced(outcomes)
    raced.spans = spans
    return raced


@dataclass
class Held:
    """What the holder saw: the most sessions waiting on a lock at once, and whether that
    reached the number of racers it waited for."""

    waiters: int
    most_waiting: int = 0
    seen: bool = False


def sessions_waiting_on_a_lock() -> int:
    """Other sessions of this test database waiting on a lock now (a row, a tuple, a
    transaction id), as PostgreSQL shows them."""
    with connection.cursor() as cursor:
        # Statistics are read once per transaction unless the snapshot is cleared.
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


@contextmanager
def lock_held_until_waited_on(
    lock: Callable[[], object], waiters: int, *, then: Callable[[], object] | None = None
) -> Iterator[Held]:
    """Take the racers' contended lock (`lock` runs inside a transaction of a thread of its
    own, e.g. a `select_for_update`) and keep it until `waiters` sessions wait on a lock, then
    run `then` in the same transaction (a write the waiters must find when they get the lock)
    and commit. Inside the block, start the racers; after it, `held.seen` says whether they
    were all seen waiting together (assert it: that is the proof that they raced)."""
    held = Held(waiters)
    locked = threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                lock()
                locked.set()
                for _ in range(POLLS):
                    held.most_waiting = max(held.most_waiting, sessions_waiting_on_a_lock())
                    if held.most_waiting >= waiters:
                        held.seen = True
                        break
                    time.sleep(POLL_SECONDS)
                if then is not None:
                    then()
        finally:
            locked.set()
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(30), "the holder never took its lock"
    try:
        yield held
    finally:
        holder.join(timeout=POLLS * POLL_SECONDS + 30)


def queued_in_order(lock: Callable[[], object], actions: list[Callable[[], object]]) -> Raced:
    """Start the actions one at a time while `lock` is held, each only once the one before it
    is seen waiting; then let go. PostgreSQL grants a row's waiters in the order they came, so
    the actions run together (all inside their transactions at once) but in the given order:
    a race test can check both orders of one race instead of hoping the scheduler tries them."""
    refusals = _refusals()
    outcomes: list[str] = ["never ran"] * len(actions)
    spans: list[tuple[float, float]] = [(0.0, 0.0)] * len(actions)
    baseline = sessions_waiting_on_a_lock()

    def run(index: int, action: Callable[[], object]) -> None:
        start = time.perf_counter()
        try:
            action()
            result = "ok"
        except refusals as error:
            result = str(error)
        except Exception as error:
            result = f"crashed: {error!r}"
        finally:
            connection.close()
        spans[index] = (start, time.perf_counter())
        outcomes[index] = result

    threads: list[threading.Thread] = []
    with lock_held_until_waited_on(lock, baseline + len(actions)) as held:
        for index, action in enumerate(actions):
            thread = threading.Thread(target=run, args=(index, action))
            thread.start()
            threads.append(thread)
            for _ in range(POLLS):
                # The holder may already have seen everyone and let go.
                if held.seen or sessions_waiting_on_a_lock() >= baseline + index + 1:
                    break
                time.sleep(POLL_SECONDS)
            else:
                break  # it never queued: `held.seen` stays False and the test says so
        for thread in threads:
            thread.join(timeout=90)
    assert held.seen, f"the actions never all waited together ({held.most_waiting} seen)"
    raced = Raced(outcomes)
    raced.spans = spans
    return raced
