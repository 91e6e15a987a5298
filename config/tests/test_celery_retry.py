"""A task that meets PostgreSQL restarting is tried again instead of failing (and waiting for
its sweep); a bug is not (found by bench/faults.py: payment commands and emails failed at
each restart)."""

from __future__ import annotations

import pytest
from django.db import OperationalError

from billing import services as billing_services
from billing import tasks
from config.celery import DatabaseRetryingTask
from config.celery import app as celery_app
from config.postgresql.errors import DATABASE_ERRORS


def test_every_task_retries_on_database_errors() -> None:
    """Every task of the product, including one that names its own `autoretry_for` (the email
    tasks named only OSError, so an email met a PostgreSQL restart as an unexpected error)."""
    celery_app.loader.import_default_modules()
    ours = [
        task
        for name, task in celery_app.tasks.items()
        if name.split(".")[0] in ("accounts", "billing", "rooms", "moderation", "config")
    ]
    assert tasks.command_execute_task in ours and len(ours) > 5
    for task in ours:
        assert isinstance(task, DatabaseRetryingTask), task.name
        retried = tuple(task.autoretry_for)
        missing = [error for error in DATABASE_ERRORS if not issubclass(error, retried)]
        assert not missing, f"{task.name} does not retry on {missing}"


def test_a_task_that_meets_a_database_restart_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def restarting_twice(command_id: int) -> str:
        calls.append(command_id)
        if len(calls) < 3:
            raise OperationalError("terminating connection due to administrator command")
        return "succeeded"

    monkeypatch.setattr(billing_services, "command_execute", restarting_twice)
    # Each retry runs at once in eager mode; it must report, not raise, its Retry.
    propagates = celery_app.conf.task_eager_propagates
    celery_app.conf.task_eager_propagates = False
    try:
        result = tasks.command_execute_task.apply(args=(7,), throw=False)
    finally:
        celery_app.conf.task_eager_propagates = propagates
    assert (result.successful(), result.result, calls) == (True, "succeeded", [7, 7, 7])


def test_a_task_that_fails_otherwise_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def broken(command_id: int) -> str:
        calls.append(command_id)
        raise ValueError("a bug")

    monkeypatch.setattr(billing_services, "command_execute", broken)
    result = tasks.command_execute_task.apply(args=(7,), throw=False)
    assert (result.failed(), calls) == (True, [7])
