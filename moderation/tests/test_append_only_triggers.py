"""Audit rows are append-only in the database itself (issue 16, security, low): the ORM guard
(accounts/append_only.py) does not stop raw SQL, a shell or another service on the same
database. A PostgreSQL trigger on every append-only table refuses UPDATE and DELETE. The models
are enumerated, so a new audit model whose table has no trigger fails here."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.db import IntegrityError, connection, models, transaction

from accounts.append_only import AppendOnlyModel
from accounts.models import ExpertEvent, ExpertEventKind
from accounts.tests.factories import ExpertProfileFactory

pytestmark = pytest.mark.django_db


def _append_only_models() -> list[type[models.Model]]:
    return [
        model
        for model in apps.get_models()
        if issubclass(model, AppendOnlyModel) and not model._meta.proxy
    ]


def test_the_append_only_models_are_found() -> None:
    tables = {model._meta.db_table for model in _append_only_models()}
    assert {
        "accounts_expertevent",
        "rooms_roomevent",
        "billing_paymentevent",
        "billing_localoperation",
        "moderation_staffaction",
    } <= tables


@pytest.mark.parametrize(
    "statement", ["UPDATE {table} SET id = id WHERE false", "DELETE FROM {table} WHERE false"]
)
def test_raw_sql_cannot_update_or_delete_any_append_only_table(statement: str) -> None:
    assert connection.vendor == "postgresql", "the backstop is PostgreSQL's; the suite runs on it"
    unguarded = []
    for model in _append_only_models():
        table = connection.ops.quote_name(model._meta.db_table)
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement.format(table=table))
        except IntegrityError as refused:
            assert "append-only" in str(refused)
        else:
            unguarded.append(model._meta.label)
    assert unguarded == [], "add the table to the append-only trigger migration"


def test_a_written_audit_row_stays_as_written_and_new_rows_still_go_in() -> None:
    profile = ExpertProfileFactory.create()
    event = ExpertEvent.objects.create(profile=profile, kind=ExpertEventKind.APPLIED, actor=None)
    with pytest.raises(IntegrityError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "UPDATE accounts_expertevent SET reason = %s WHERE id = %s", ["forged", event.pk]
            )
    with pytest.raises(IntegrityError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("DELETE FROM accounts_expertevent WHERE id = %s", [event.pk])
    event.refresh_from_db()
    assert event.reason == ""
    ExpertEvent.objects.create(profile=profile, kind=ExpertEventKind.UPDATED, actor=None)
    assert ExpertEvent.objects.filter(profile=profile).count() == 2
