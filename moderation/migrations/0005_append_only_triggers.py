"""A PostgreSQL backstop for the append-only audit tables (issue 16): the ORM guard
(accounts/append_only.py) stops Django code; these triggers stop raw SQL, a database shell and
any other client. Statement-level, so they refuse even an UPDATE or DELETE that matches no row.

The triggers live here because moderation is the top layer, whose migrations may depend on every
app's. A new append-only model adds its table to a migration like this one (the test
moderation/tests/test_append_only_triggers.py enumerates the models and fails until it does).
A future migration that must rewrite audit rows disables the trigger around its own UPDATE.

SQLite (the laptop's `make run`) has no such trigger here: nothing but the ORM writes there.
"""

from django.db import migrations

TABLES = [
    "accounts_expertevent",
    "rooms_roomevent",
    "billing_paymentevent",
    "billing_localoperation",
    "moderation_staffaction",
]

FUNCTION = """
CREATE OR REPLACE FUNCTION parley_append_only_refuse() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- restrict_violation: Django raises IntegrityError, as for any broken invariant.
    RAISE EXCEPTION '% rows are append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;
"""


def _on_postgresql(schema_editor):
    return schema_editor.connection.vendor == "postgresql"


def triggers_create(apps, schema_editor):
    if not _on_postgresql(schema_editor):
        return
    # params=None: the function body has % signs that are not placeholders.
    schema_editor.execute(FUNCTION, params=None)
    for table in TABLES:
        schema_editor.execute(
            f'DROP TRIGGER IF EXISTS parley_append_only ON "{table}"; '
            f'CREATE TRIGGER parley_append_only BEFORE UPDATE OR DELETE ON "{table}" '
            "FOR EACH STATEMENT EXECUTE FUNCTION parley_append_only_refuse();"
        )


def triggers_drop(apps, schema_editor):
    if not _on_postgresql(schema_editor):
        return
    for table in TABLES:
        schema_editor.execute(f'DROP TRIGGER IF EXISTS parley_append_only ON "{table}";')
    schema_editor.execute("DROP FUNCTION IF EXISTS parley_append_only_refuse();")


class Migration(migrations.Migration):

    dependencies = [
        ("moderation", "0004_audit_rows_protected"),
        ("accounts", "0003_audit_rows_protected"),
        ("billing", "0003_audit_rows_protected"),
        ("rooms", "0007_audit_rows_protected"),
    ]

    operations = [migrations.RunPython(triggers_create, triggers_drop)]
