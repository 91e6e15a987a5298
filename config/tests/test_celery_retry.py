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


def test_every_task_retries_on_database_errors() -> None:
    assert isinstance(tasks.command_execute_task, DatabaseRetryingTask)
    assert OperationalError in tasks.command_execute_task.autoretry_for


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
