"""The database pool after its connections died (PostgreSQL restarted): the next request gets
a new connection at once instead of failing after the pool's timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

IDLE = 4


def _in_thread(work: Callable[[], Any]) -> Any:
    """`work` on a thread of its own, as a request or a socket's database call runs, with
    its connection handed back to the pool after."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(work())
        except Exception as error:  # noqa: BLE001 - handed to the test to assert on
            result.append(error)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    return result[0]


def _backend() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
def test_a_pool_whose_idle_connections_all_died_lends_a_new_one_at_once() -> None:
    # This test's own connection, held from now on, so it is not one of those killed.
    own = _backend()
    # Several connections at once, so the pool keeps that many idle after.
    barrier = threading.Barrier(IDLE)

    def held() -> int:
        pid = _backend()
        barrier.wait(10)
        return pid

    threads: list[threading.Thread] = []
    pids: list[Any] = []
    for _ in range(IDLE):
        thread = threading.Thread(target=lambda: pids.append(_in_thread(held)))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(set(pids)) == IDLE, pids
    assert own not in pids
    # As a restart of PostgreSQL does to them.
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM unnest(%s) AS pid", [pids])
        assert cursor.fetchone()[0] == IDLE

    began = time.monotonic()
    after = _in_thread(_backend)
    waited = time.monotonic() - began
    # psycopg_pool's own check alone waited 1 s, 2 s and 4 s between the dead ones and
    # failed: "couldn't get a connection after 5.00 sec".
    assert isinstance(after, int), after
    assert after not in pids
    assert waited < 2, f"{waited:.1f} s for a connection"
