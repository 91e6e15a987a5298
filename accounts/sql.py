"""INSERTs written from the models, for the few hot paths that write related rows in one
statement on PostgreSQL (a booking's payment with its event; its room, seat and event).

Each round trip a booking makes inside its transaction is time the rows it locks stay locked,
and each ORM save costs more Python than the statement costs PostgreSQL. `insert_select`
gives the SQL of one row's INSERT as `save()` would write it (defaults and `pre_save`, such as
`auto_now`, applied to the instance too), so a caller can chain several in a `WITH` and a
column added to the model later is not missed. Model signals do not run (the models written
this way have no receivers), and the append-only guard does not apply to an INSERT anyway.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS, connection, connections
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
