"""Three Celery queues with time limits (issue 16, F): a mail server that never answers must not
hold up a room's close or a payment command, and no task runs forever."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from kombu import Consumer

from config.celery import QUEUE_PRIORITIES, QUEUES, app, worker_pool_refusal

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "billing.tasks.command_execute_task": "money",
    "billing.tasks.commands_execute_task": "money",
    "billing.tasks.commands_send_due": "money",
    "billing.tasks.webhook_process_task": "money",
    "billing.tasks.webhooks_process_pending": "money",
    "billing.tasks.payment_hold_place_task": "money",
    "billing.tasks.holds_place_due": "money",
    "billing.tasks.payouts_due_create": "money",
    "rooms.tasks.rooms_advance": "rooms",
    "rooms.tasks.rooms_close_due": "rooms",
    "rooms.tasks.reservations_expire": "rooms",
    "rooms.tasks.reminders_queue": "rooms",
    "rooms.tasks.presence_grace_end": "rooms",
    "accounts.tasks.email_send_task": "email",
    "accounts.tasks.email_send_many_task": "email",
    "accounts.tasks.email_sweep_unsent": "email",
    "accounts.tasks.sessions_clear_expired": "rooms",
}


def _ours() -> list[str]:
    app.loader.import_default_modules()
    return sorted(
        name for name in app.tasks if name.split(".")[0] in ("accounts", "billing", "rooms")
    )


@pytest.mark.parametrize(("task", "queue"), sorted(EXPECTED.items()))
def test_each_task_is_routed_to_its_queue(task: str, queue: str) -> None:
    assert app.amqp.router.route({}, task)["queue"].name == queue


def test_every_task_of_the_apps_has_a_queue_and_time_limits() -> None:
    assert set(QUEUES) == {"money", "rooms", "email"}
    for name in _ours():
        queue = app.amqp.router.route({}, name)["queue"].name
        assert queue in QUEUES, name
        task = app.tasks[name]
        soft, hard = settings.CELERY_QUEUE_TIME_LIMITS[queue]
        assert (task.soft_time_limit, task.time_limit) == (soft, hard), name
        assert soft < hard
    # Money tasks are killed before the payment command's lease ends: never two senders.
    assert settings.CELERY_QUEUE_TIME_LIMITS["money"][1] < settings.PAYMENT_COMMAND_LEASE_SECONDS


def test_beat_sends_only_tasks_that_have_a_queue() -> None:
    for entry in app.conf.beat_schedule.values():
        assert app.amqp.router.route({}, entry["task"])["queue"].name in QUEUES


@pytest.mark.parametrize("path", ["scripts/run.sh", "rooms/tests/e2e_services.py"])
def test_every_worker_started_by_the_project_consumes_all_queues(path: str) -> None:
    text = (ROOT / path).read_text()
    commands = re.findall(r"celery.{0,80}worker.*?(?:&|\)\n)", text, flags=re.S)
    assert commands, f"no worker command found in {path}"
    for command in commands:
        assert re.search(r"(--queues[ =]|-Q )money,rooms,email", command), command


@pytest.mark.parametrize(
    ("pool", "concurrency", "pool_max", "refused"),
    [
        ("threads", 32, 10, True),
        ("gevent", 11, 10, True),
        ("threads", 10, 10, False),
        # Each prefork child has a pool of its own, one task at a time.
        ("prefork", 32, 10, False),
        ("solo", 1, 10, False),
        # SQLite (make run on a laptop): no pool to run out of.
        ("threads", 32, None, False),
    ],
)
def test_a_threaded_worker_may_not_run_more_tasks_at_once_than_its_database_pool(
    pool: str, concurrency: int, pool_max: int | None, refused: bool
) -> None:
    refusal = worker_pool_refusal(pool, concurrency, pool_max)
    assert bool(refusal) == refused
    if refused:
        assert "DATABASE_POOL_MAX" in refusal and f"concurrency {concurrency}" in refusal


def test_a_worker_with_more_threads_than_database_connections_refuses_to_start() -> None:
    """The real worker, as `celery worker --pool threads --concurrency N` builds it: the check
    runs before any task could wait on the pool."""
    pool_max = settings.DATABASES["default"]["OPTIONS"]["pool"]["max_size"]
    with pytest.raises(SystemExit, match="DATABASE_POOL_MAX"):
        app.WorkController(pool_cls="threads", concurrency=pool_max + 1, hostname="check@test")
    worker = app.WorkController(pool_cls="threads", concurrency=pool_max, hostname="check@test")
    assert getattr(worker, "concurrency", None) == pool_max


# send_task always goes to the broker, which is what this test wants.
@pytest.mark.filterwarnings("ignore::celery.exceptions.AlwaysEagerIgnored")
def test_a_worker_on_every_queue_takes_rooms_work_before_money_and_money_before_email() -> None:
    """A storm of closes writes a capture per seat and each capture a receipt: on workers that
    serve all three queues the closes must not wait behind them (QUEUE_PRIORITIES). Through the
    real broker: the worker's consumer asks for every queue at once and gets the rooms task
    first, though it was sent last."""
    sent = [
        "accounts.tasks.email_send_task",
        "billing.tasks.command_execute_task",
        "rooms.tasks.rooms_advance",
    ]
    received: list[str] = []
    queues = [app.amqp.queues[name] for name in QUEUES]
    with app.connection_for_write() as conn:
        assert conn.transport.driver_type == "redis", "this test needs the Redis broker"
        for queue in queues:
            queue.bind(conn.default_channel).purge()
        for name in sent:
            app.send_task(name, args=[0] if "rooms" not in name else [], connection=conn)

        def take(body: object, message: Any) -> None:
            received.append(message.headers["task"])
            message.ack()

        with Consumer(conn, queues=queues, callbacks=[take], accept=["json"]):
            while len(received) < len(sent):
                conn.drain_events(timeout=5)
    assert received == list(reversed(sent))
    assert [QUEUE_PRIORITIES[q] for q in ("rooms", "money", "email")] == sorted(
        QUEUE_PRIORITIES.values()
    )
