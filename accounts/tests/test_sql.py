"""accounts/sql.py: an INSERT written from the model stores what save() would, and a row read
back through `columns`/`load` is the instance a queryset loads."""

from __future__ import annotations

import pytest
from django.db import connection

from accounts.models import OutboundEmail, User
from accounts.sql import columns, insert_select, load, saved
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def test_an_insert_from_the_model_stores_its_defaults_and_reads_back_as_the_orm_reads_it() -> None:
    email = OutboundEmail(
        key="k-1", to="a@example.test", subject="Hello", headers={"X-Tag": "1"}, renderer="r"
    )
    sql, params = insert_select(email)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH email AS ({sql} RETURNING *) SELECT {columns(OutboundEmail, 'email')}"  # noqa: S608 - test SQL from the model
            " FROM email",
            params,
        )
        [row] = cursor.fetchall()
    loaded, end = load(OutboundEmail, row)
    assert end == len(row)
    stored = OutboundEmail.objects.get(key="k-1")
    for field in OutboundEmail._meta.concrete_fields:
        assert getattr(loaded, field.attname) == getattr(stored, field.attname), field.name
    # JSON comes back as the ORM gives it, and the defaults the instance took were written.
    assert loaded.headers == {"X-Tag": "1"} and loaded.renderer_args == {}
    assert stored.created_at == email.created_at and stored.attempts == 0


def test_a_computed_column_takes_the_sql_given_and_saved_marks_the_instance() -> None:
    user = UserFactory.create()
    email = OutboundEmail(key="k-2", subject="s", renderer="r")
    sql, params = insert_select(email, computed={"to": ("u.email", ())}, source="users u")
    table = connection.ops.quote_name(User._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH users AS (SELECT * FROM {table} WHERE id = %s) {sql} RETURNING id",  # noqa: S608 - test SQL from the model
            [user.pk, *params],
        )
        [(email_id,)] = cursor.fetchall()
    saved(email, email_id)
    assert not email._state.adding
    assert OutboundEmail.objects.get(pk=email.pk).to == user.email


def test_a_computed_column_the_model_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="no columns"):
        insert_select(OutboundEmail(key="k"), computed={"room_id": ("1", ())})
