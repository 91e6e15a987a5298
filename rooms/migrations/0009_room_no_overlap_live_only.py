"""A closed room no longer holds its whole booked range in the no-overlap constraint.

A session that ended early frees the rest of its time: `selectors.rooms_blocking` counts a
closed room only up to its close plus its buffer after, under the expert's calendar lock.
Scheduled, open and live rooms keep the constraint exactly as before (0002).
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

CONSTRAINT = "room_expert_no_overlap"


def _recreate(schema_editor: BaseDatabaseSchemaEditor, states: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"ALTER TABLE rooms_room DROP CONSTRAINT IF EXISTS {CONSTRAINT}")
    schema_editor.execute(
        f"ALTER TABLE rooms_room ADD CONSTRAINT {CONSTRAINT} EXCLUDE USING gist ("
        " expert_id WITH =,"
        " tstzrange(blocked_from, blocked_until, '[)') WITH &&"
        f") WHERE (state NOT IN ({states}))"
    )


def forward(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _recreate(schema_editor, "'canceled', 'closed'")


def backward(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    _recreate(schema_editor, "'canceled'")


class Migration(migrations.Migration):
    dependencies = [("rooms", "0008_rating_hidden")]

    operations = [migrations.RunPython(forward, backward)]
