"""PostgreSQL refuses two rooms of one expert whose buffered time ranges overlap.

An exclusion constraint, so the guarantee holds under any concurrency: of two transactions
booking the same slot, the second fails at INSERT. SQLite (the embedded `make run` setup) has
no exclusion constraints; there the booking service's overlap check runs inside a write
transaction that SQLite serialises (transaction_mode IMMEDIATE), which closes the same race.
"""

from django.contrib.postgres.operations import BtreeGistExtension
from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

CONSTRAINT = "room_expert_no_overlap"


def create(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(
        f"ALTER TABLE rooms_room ADD CONSTRAINT {CONSTRAINT} EXCLUDE USING gist ("
        " expert_id WITH =,"
        " tstzrange(blocked_from, blocked_until, '[)') WITH &&"
        ") WHERE (state <> 'canceled')"
    )


def drop(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f"ALTER TABLE rooms_room DROP CONSTRAINT IF EXISTS {CONSTRAINT}")


class Migration(migrations.Migration):
    dependencies = [("rooms", "0001_initial")]

    operations = [
        BtreeGistExtension(),
        migrations.RunPython(create, drop),
    ]
