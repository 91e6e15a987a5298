"""The log of blocks and unblocks (BlockEvent), append-only like the other audit tables: the
trigger of 0005 guards its table too. Blocks that exist already get their "created" row, with
the time and reason the block carries, so every standing block has its audit row."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models

TABLE = "moderation_blockevent"


def blocks_standing_logged(apps, schema_editor):
    Block = apps.get_model("accounts", "Block")
    BlockEvent = apps.get_model("moderation", "BlockEvent")
    BlockEvent.objects.bulk_create(
        BlockEvent(
            blocker_id=block.blocker_id,
            blocked_id=block.blocked_id,
            kind="created",
            reason=block.reason,
            created_at=block.created_at,
        )
        for block in Block.objects.order_by("pk").iterator()
    )


def trigger_create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    # The function parley_append_only_refuse() is 0005's.
    schema_editor.execute(
        f'CREATE TRIGGER parley_append_only BEFORE UPDATE OR DELETE ON "{TABLE}" '
        "FOR EACH STATEMENT EXECUTE FUNCTION parley_append_only_refuse();"
    )


def trigger_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute(f'DROP TRIGGER IF EXISTS parley_append_only ON "{TABLE}";')


class Migration(migrations.Migration):
    dependencies = [
        ("moderation", "0005_append_only_triggers"),
        ("accounts", "0003_audit_rows_protected"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="BlockEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[("created", "Blocked"), ("removed", "Unblocked")], max_length=10
                    ),
                ),
                ("reason", models.TextField(blank=True)),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "blocked",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="block_events_received",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "blocker",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="block_events_made",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at", "-pk"],
                "abstract": False,
                "base_manager_name": "objects",
                "indexes": [
                    models.Index(
                        fields=["blocker", "blocked", "created_at"],
                        name="moderation__blocker_aae477_idx",
                    )
                ],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("kind__in", ["created", "removed"])),
                        name="block_event_kind_valid",
                    )
                ],
            },
        ),
        migrations.RunPython(blocks_standing_logged, migrations.RunPython.noop),
        migrations.RunPython(trigger_create, trigger_drop),
    ]
