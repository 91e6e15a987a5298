"""The migration that adds the block log gives every block standing at the time its "created"
row, with the block's own time and reason: no standing block is without its audit row."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("moderation", "0005_append_only_triggers")]
AFTER = [("moderation", "0006_block_events")]


@pytest.mark.django_db(transaction=True)
def test_standing_blocks_get_their_created_row() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    try:
        old = executor.loader.project_state(BEFORE).apps
        user_model = old.get_model("accounts", "User")
        made = dt.datetime(2026, 11, 1, 9, 30, tzinfo=dt.UTC)
        me = user_model.objects.create(email="me@example.test", display_name="Me")
        them = user_model.objects.create(email="them@example.test", display_name="Them")
        old.get_model("accounts", "Block").objects.create(
            blocker=me, blocked=them, reason="Rude", created_at=made
        )

        executor = MigrationExecutor(connection)
        executor.migrate(AFTER)
        new = executor.loader.project_state(AFTER).apps
        rows = new.get_model("moderation", "BlockEvent").objects.values_list(
            "blocker_id", "blocked_id", "kind", "reason", "created_at"
        )
        assert list(rows) == [(me.pk, them.pk, "created", "Rude", made)]
    finally:
        # Back to the latest state for the tests that follow (transaction=True flushes rows).
        executor = MigrationExecutor(connection)
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
