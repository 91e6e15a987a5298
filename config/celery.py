"""The Celery application: tasks from every app, and the beat schedule of periodic sweeps."""

from __future__ import annotations

import os
from fnmatch import fnmatchcase
from typing import Any

from celery import Celery, Task
from celery.fixups.django import (  # type: ignore[attr-defined] # celery-types lacks the second
    DjangoFixup,
    DjangoWorkerFixup,
)
from celery.schedules import crontab
from celery.signals import worker_init
from django.conf import settings
from kombu import Queue

from config.postgresql.errors import DATABASE_ERRORS

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class PoolKeepingWorkerFixup(DjangoWorkerFixup):  # type: ignore[misc]
    """Celery's Django fixup of a worker, except that a task's start and end give its
    database connections back to the process's pool instead of closing the pool.

    Celery 5.7 closes the whole pool around every task of a prefork child
    (celery/celery#10554, open): each task opened a new pool, with new PostgreSQL connections
    and the pool's threads, and lost the prepared statements of the connections before. In a
    close storm the first room of every batch took 33 ms instead of 13 (bench/close_storm.py);
    every task of every queue paid the connect. Everything else is Celery's own: the pool a
    new child inherits from the parent is still closed (`on_worker_process_init`), as is the
    parent's before it forks. Django's `close()` hands a connection back, and the pool checks
    one before lending it again (config/postgresql/base.py), so connections broken while
    PostgreSQL restarted are replaced, not lent."""

    def on_task_prerun(self, sender: Any, **kwargs: Any) -> None:
        if not getattr(sender.request, "is_eager", False):
            self._connections_return()

    def on_task_postrun(self, sender: Any, **kwargs: Any) -> None:
        if not getattr(sender.request, "is_eager", False):
            self._connections_return()
            self.close_cache()

    def _connections_return(self) -> None:
        for connection in self._db.connections.all(initialized_only=True):
            try:
                connection.close()
            except self.interface_errors:
                pass  # Already gone: the pool lends another.


class PoolKeepingDjangoFixup(DjangoFixup):
    """Celery's Django fixup, with `PoolKeepingWorkerFixup` for the worker."""

    _worker_fixup: PoolKeepingWorkerFixup | None

    @property
    def worker_fixup(self) -> PoolKeepingWorkerFixup:
        if self._worker_fixup is None:
            self._worker_fixup = PoolKeepingWorkerFixup(self.app)
        return self._worker_fixup

    @worker_fixup.setter
    def worker_fixup(self, value: PoolKeepingWorkerFixup) -> None:
        self._worker_fixup = value


def django_fixup(app: Celery) -> DjangoFixup:
    """The app's only fixup, in place of Celery's built-in Django one."""
    fixup = PoolKeepingDjangoFixup(app)
    fixup.install()
    return fixup


class DatabaseRetryingTask(Task[Any, Any]):
    """Every task's base: one that fails because PostgreSQL is down or restarting is tried
    again (1, 2, 4… s, at most 30 s apart, with jitter, ten times) instead of failing. Tasks
    are safe to run twice, and a failed one waited for its sweep (beat's safety nets, every
    30–60 s) and was logged as an unexpected error: the fault harness found payment commands
    and emails failed this way at each PostgreSQL restart (bench/faults.py)."""

    autoretry_for = DATABASE_ERRORS
    retry_backoff = 1
    retry_backoff_max = 30
    retry_jitter = True
    max_retries = 10


app = Celery("parley", fixups=["config.celery:django_fixup"], task_cls=DatabaseRetryingTask)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

QUEUES = ("money", "rooms", "email")
# Which queue each task goes to, first match wins. Anything not named here (a new task) goes to
# the rooms queue, the general one.
TASK_QUEUES: tuple[tuple[str, str], ...] = (
    ("billing.tasks.*", "money"),
    ("accounts.tasks.email_*", "email"),
    ("rooms.tasks.*", "rooms"),
    ("accounts.tasks.*", "rooms"),
)
DEFAULT_QUEUE = "rooms"
# What a worker serving several queues takes first when more than one has work (on Redis, 0
# is the highest; the broker keeps a list per queue and step of 0, 3, 6, 9, and a worker asks
# for the highest step of every queue first). The rooms' timed transitions before money: when
# sessions end on the hour, the sockets hear their close before the captures the closes wrote
# are sent, and the closes do not wait behind them; captures before emails (a receipt waits
# for its capture anyway). Workers given one queue each are not affected.
QUEUE_PRIORITIES = {"rooms": 0, "money": 3, "email": 6}


def task_queue(name: str) -> str:
    return next((queue for glob, queue in TASK_QUEUES if fnmatchcase(name, glob)), DEFAULT_QUEUE)


def task_route(name: str, *args: Any, **kwargs: Any) -> dict[str, str | int]:
    """Celery's router: every task to its queue, with its queue's priority."""
    queue = task_queue(name)
    return {"queue": queue, "priority": QUEUE_PRIORITIES[queue]}


class QueueTimeLimits:
    """Gives each task the soft and hard time limits of its queue (CELERY_QUEUE_TIME_LIMITS)."""

    def annotate(self, task: Any) -> dict[str, int]:
        soft, hard = settings.CELERY_QUEUE_TIME_LIMITS[task_queue(task.name)]
        return {"soft_time_limit": soft, "time_limit": hard}


app.conf.task_queues = [Queue(name, routing_key=name) for name in QUEUES]
app.conf.task_default_queue = DEFAULT_QUEUE
app.conf.task_routes = (task_route,)
app.conf.task_annotations = [QueueTimeLimits()]

app.conf.beat_schedule = {
    # Reservations are also ignored at read time once past; the sweep frees their rooms.
    "rooms-reservations-expire": {"task": "rooms.tasks.reservations_expire", "schedule": 30.0},
    "rooms-reminders-queue": {"task": "rooms.tasks.reminders_queue", "schedule": 60.0},
    # The room state machine's timed transitions; tasks at the exact moments do the same.
    "rooms-advance": {"task": "rooms.tasks.rooms_advance", "schedule": 10.0},
    # Payment commands and webhook events whose task was lost, or that wait for a retry.
    "billing-commands-send-due": {"task": "billing.tasks.commands_send_due", "schedule": 30.0},
    "billing-webhooks-process-pending": {
        "task": "billing.tasks.webhooks_process_pending",
        "schedule": 60.0,
    },
    # Holds for sessions booked far ahead are placed a day before; payouts after 72 h.
    "billing-holds-place-due": {"task": "billing.tasks.holds_place_due", "schedule": 60.0},
    "billing-payouts-due-create": {"task": "billing.tasks.payouts_due_create", "schedule": 600.0},
    "accounts-email-sweep-unsent": {
        "task": "accounts.tasks.email_sweep_unsent",
        "schedule": 60.0,
    },
    # Sessions of people who never log out pile up; Django leaves their removal to us.
    "accounts-sessions-clear-expired": {
        "task": "accounts.tasks.sessions_clear_expired",
        "schedule": crontab(minute=17, hour=3),
    },
}


# Worker pools whose tasks run as threads of one process, sharing its database pool.
THREADED_POOLS = ("threads", "gevent", "eventlet")


def worker_pool_refusal(pool: str, concurrency: int, database_pool_max: int | None) -> str:
    """Why a worker must not start with this pool and concurrency ("" when it may).

    A task holds a database connection while it runs (Celery's Django fixup returns it after
    each task). Prefork children have a pool each; threads share their process's: more of
    them than `DATABASE_POOL_MAX` would wait out the pool's timeout and fail their tasks
    ("couldn't get a connection") instead of queuing on the broker (docs/ARCHITECTURE.md,
    "The database pool")."""
    if pool not in THREADED_POOLS or database_pool_max is None:
        return ""
    if concurrency <= database_pool_max:
        return ""
    return (
        f"A {pool} worker with concurrency {concurrency} runs more tasks at once than its "
        f"process's {database_pool_max} database connections (DATABASE_POOL_MAX). Lower "
        "--concurrency, raise DATABASE_POOL_MAX, or run the prefork pool."
    )


def _pool_name(pool_cls: object) -> str:
    """The worker's pool by its alias ("prefork", "threads"…), from an alias, a
    "module:Class" name or the class itself."""
    name = pool_cls if isinstance(pool_cls, str) else f"{getattr(pool_cls, '__module__', '')}:"
    if ":" in name:
        name = name.split(":", 1)[0].rsplit(".", 1)[-1]
    return "threads" if name == "thread" else name


@worker_init.connect
def _worker_pool_check(sender: Any, **kwargs: Any) -> None:
    options = settings.DATABASES["default"].get("OPTIONS", {})
    pool = options.get("pool")
    refusal = worker_pool_refusal(
        _pool_name(sender.pool_cls),
        int(sender.concurrency) if str(sender.concurrency).isdigit() else 0,
        int(pool["max_size"]) if isinstance(pool, dict) else None,
    )
    if refusal:
        # Celery logs and swallows an exception from a signal handler; the worker must stop.
        raise SystemExit(refusal)
