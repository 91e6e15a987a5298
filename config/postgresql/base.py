"""Django's PostgreSQL backend (ENGINE "config.postgresql"), with one change: the connection
pool checks a connection before lending it with `pooled_connection_check`, not psycopg_pool's
bare check, which Django installs and gives no way to replace."""

from __future__ import annotations

from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.postgresql import base
from psycopg import Connection
from psycopg_pool import ConnectionPool


def pooled_connection_check(connection: Connection[Any]) -> None:
    """psycopg_pool's own check (an empty query), and when a connection fails it, every
    other idle connection of the pool is replaced at once.

    A dead connection is seldom alone: PostgreSQL restarted, or something between ended them
    all. The pool waits between two failed checks for one request (1 s, then 2 s, then 4 s in
    psycopg_pool 3.3), so a process that kept three or more idle connections failed its first
    request after a restart with "couldn't get a connection after 5 s" (Daphne keeps one for
    each of the sockets' database threads; a Celery child two or three). Replaced together,
    the request waits about a second and gets a new one (config/tests/test_database_pool.py).
    """
    try:
        ConnectionPool.check_connection(connection)
    except Exception:
        wrapper: Any = connections[DEFAULT_DB_ALIAS]  # django-stubs knows no pool
        pool: ConnectionPool[Any] | None = wrapper.pool
        if pool is not None:
            pool.drain()
        raise


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> ConnectionPool[Any] | None:
        # django-stubs knows neither the pool nor what makes it.
        django: Any = super()
        pools: dict[str, ConnectionPool[Any]] = django._connection_pools
        options = self.settings_dict["OPTIONS"].get("pool")
        if options and self.alias not in pools:
            # As Django makes it (django/db/backends/postgresql/base.py), with our check.
            kwargs = self.get_connection_params()
            kwargs["autocommit"] = True
            pool = ConnectionPool(
                kwargs=kwargs,
                open=False,
                configure=django._configure_connection,
                check=pooled_connection_check,
                **options,
            )
            pools.setdefault(self.alias, pool)
        found: ConnectionPool[Any] | None = django.pool
        return found
