"""INSERTs written from the models, for the few hot paths that write related rows in one
statement on PostgreSQL (a booking's payment with its event; its room, seat and event).

Each round trip a booking makes inside its transaction is time the rows it locks stay locked,
and each ORM save costs more Python than the statement costs PostgreSQL. `insert_select`
gives the SQL of one row's INSERT as `save()` would write it (defaults and `pre_save`, such as
`auto_now`, applied to the instance too), so a caller can chain several in a `WITH` and a
column added to the model later is not missed. Model signals do not run (the models written
this way have no receivers), and the append-only guard does not apply to an INSERT anyway.

`cursor_prepared` runs such statements as prepared statements, planned once per connection.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models import Model

M = TypeVar("M", bound=Model)

# A column given as SQL instead of the instance's value (such as the id of a row inserted
# earlier in the same statement, `"room.id"`), with its parameters.
Computed = tuple[str, Sequence[Any]]


def insert_select(
    obj: Model, *, computed: Mapping[str, Computed] | None = None, source: str = ""
) -> tuple[str, list[Any]]:
    """`INSERT INTO <table> (<every column but the key>) SELECT <values> [FROM <source>]` for
    `obj`, and its parameters. `computed`: columns (by attribute name, `room_id`) written as
    SQL instead, which may refer to `source`. The caller adds `WHERE` or `RETURNING`."""
    computed = computed or {}
    table, fields = _insertable(type(obj))
    if not computed.keys() <= {field.attname for field, _ in fields}:
        raise ValueError(f"{type(obj).__name__} has no columns {sorted(computed)}.")
    # The connection itself: each lookup through the `connection` proxy costs a thread-local.
    database = connections[DEFAULT_DB_ALIAS]
    values: list[str] = []
    params: list[Any] = []
    for field, _ in fields:
        if field.attname in computed:
            sql, computed_params = computed[field.attname]
            values.append(sql)
            params.extend(computed_params)
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(field.pre_save(obj, add=True), database))
    sql = (
        f"INSERT INTO {table} ({', '.join(column for _, column in fields)})"  # noqa: S608 - names from the model; values are parameters
        f" SELECT {', '.join(values)}"
    )
    if source:
        sql += f" FROM {source}"
    return sql, params


@functools.cache
def _insertable(model: type[Model]) -> tuple[str, tuple[tuple[Any, str], ...]]:
    """The quoted table and its columns but the key, with their fields."""
    quote = connection.ops.quote_name
    fields = tuple(
        (field, quote(field.column))
        for field in model._meta.concrete_fields
        if not field.primary_key
    )
    return quote(model._meta.db_table), fields


def saved(obj: Model, pk: int) -> None:
    """Mark `obj` as the row just inserted with key `pk`, as `save()` leaves an instance."""
    obj.pk = pk
    obj._state.adding = False
    obj._state.db = DEFAULT_DB_ALIAS


@functools.cache
def _attnames(model: type[Model]) -> tuple[str, ...]:
    return tuple(field.attname for field in model._meta.concrete_fields)


@functools.cache
def _converters(model: type[Model]) -> tuple[tuple[int, Any, tuple[Any, ...]], ...]:
    """The fields whose values a queryset converts after reading (JSON, custom fields)."""
    found = []
    for index, field in enumerate(model._meta.concrete_fields):
        column = field.get_col(model._meta.db_table)
        backend = connection.ops.get_db_converters(column)
        own = column.get_db_converters(connection)
        if backend or own:
            found.append((index, column, (*backend, *own)))
    return tuple(found)


@functools.cache
def columns(model: type[Model], alias: str) -> str:
    """Every column of `model`, as `alias.column, …`, in the order `load` reads them."""
    quote = connection.ops.quote_name
    return ", ".join(f"{alias}.{quote(field.column)}" for field in model._meta.concrete_fields)


def load(model: type[M], row: Sequence[Any], start: int = 0) -> tuple[M, int]:
    """An instance of `model` from `row[start:]`, read by `columns`, as a queryset loads it
    (values converted as it converts them), and where the next model's columns start (rows
    that join several models)."""
    names = _attnames(model)
    end = start + len(names)
    values = list(row[start:end])
    converted = _converters(model)
    if converted:
        database = connections[DEFAULT_DB_ALIAS]
        for index, column, converters in converted:
            for converter in converters:
                values[index] = converter(values[index], column, database)
    return model.from_db(DEFAULT_DB_ALIAS, list(names), values), end


@contextmanager
def cursor_prepared() -> Iterator[CursorWrapper]:
    """A cursor whose statements are prepared: PostgreSQL parses and plans each one the first
    time a connection runs it and reuses the plan after (psycopg keeps up to 100 per
    connection, and the pool keeps the connections). For the hot paths' own statements only
    (a booking's seven: `bench/booking.py` went from 5.0 to 3.7 ms a booking), never for the
    ORM's: Django's cursors bind parameters on the client and prepare nothing, and preparing
    every query it writes would fill the cache with one-off texts. The statements run in the
    caller's transaction, and execute wrappers and query logging see them as usual. A
    connection pooler in front of PostgreSQL must keep prepared statements per client (PgBouncer
    1.21+ with `max_prepared_statements`, or session pooling: docs/OPERATIONS.md). Other
    databases get the usual cursor."""
    if connection.vendor != "postgresql":
        with connection.cursor() as cursor:
            yield cursor
        return
    connection.ensure_connection()
    connection.validate_thread_sharing()
    # Django's own wrapping (debug logging, execute wrappers) around a cursor of ours.
    ours = _prepared_cursor_class()(connection.connection)
    if connection.queries_logged:
        wrapped: CursorWrapper = _PreparedDebugWrapper(ours, connection)
    else:
        wrapped = connection.make_cursor(ours)
    with wrapped as cursor:
        yield cursor


class _PreparedDebugWrapper(CursorDebugWrapper):
    """Django's query logging, recording each statement as written (its parameters apart):
    psycopg keeps no text of a prepared statement's execution for Django to read back."""

    def debug_sql(
        self,
        sql: Any = None,
        params: Any = None,
        use_last_executed_query: bool = False,
        many: bool = False,
    ) -> Any:
        return super().debug_sql(sql, params, use_last_executed_query=False, many=many)


@functools.cache
def _prepared_cursor_class() -> type[Any]:
    # Imported here: the PostgreSQL backend needs psycopg, which a SQLite-only run may lack.
    from django.db.backends.postgresql.base import (  # type: ignore[attr-defined]
        ServerBindingCursor,
    )

    class PreparedCursor(ServerBindingCursor):  # type: ignore[misc]
        """Parameters bound by the server, and every statement prepared at once."""

        def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
            return super().execute(query, params, **{**kwargs, "prepare": True})

    return PreparedCursor
