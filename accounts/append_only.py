"""Audit logs are written once (issue 7, STYLE.md: every write that matters leaves an event).

The base lives in accounts, the lowest layer, so every app's log uses the same one: the expert
application history, the room history, payment events, staff actions. Updates and deletes are
refused on the instance, on querysets and on the base manager; a row's parent and actor are
PROTECTed, so no cascade deletes it or nulls its actor; admin shows these rows read-only.
(Raw SQL is outside this: the ORM is the only writer.)
"""

from __future__ import annotations

from typing import Any, NoReturn

from django.db import models


class AppendOnlyQuerySet(models.QuerySet[Any]):
    """Rows of an audit log are written once: bulk updates and deletes are refused."""

    def update(self, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.model.__name__} rows are append-only.")

    def delete(self) -> NoReturn:
        raise TypeError(f"{self.model.__name__} rows are append-only.")

    def bulk_update(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.model.__name__} rows are append-only.")

    def update_or_create(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.model.__name__} rows are append-only.")

    def bulk_create(self, objs: Any, *args: Any, **kwargs: Any) -> Any:
        # An upsert rewrites the row it collides with; ignoring the collision writes nothing.
        if kwargs.get("update_conflicts"):
            raise TypeError(f"{self.model.__name__} rows are append-only.")
        return super().bulk_create(objs, *args, **kwargs)


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True
        # The manager Django uses behind the scenes (and `_base_manager` in code) refuses too.
        # A subclass's Meta must inherit this one to keep it.
        base_manager_name = "objects"

    def save(self, *args: Any, **kwargs: Any) -> None:
        # Always an INSERT: a new instance given the pk of an existing row would otherwise
        # UPDATE that row in place.
        if (
            args
            or not self._state.adding
            or kwargs.get("force_update")
            or kwargs.get("update_fields")
        ):
            raise TypeError(f"{type(self).__name__} rows are append-only.")
        super().save(**{**kwargs, "force_insert": True})

    def delete(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{type(self).__name__} rows are append-only.")
