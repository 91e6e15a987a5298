import re
from datetime import UTC, datetime

from django.db import migrations, models

# Descriptions used to carry who and when: "Architecture review with Erin Expert, 2026-12-07
# 09:00 UTC". The time then showed in UTC to everyone, and the expert read their own name.
_OLD = re.compile(r"^(?P<head>.+), (?P<when>\d{4}-\d{2}-\d{2} \d{2}:\d{2}) UTC$")


def split_descriptions(apps, schema_editor):
    Payment = apps.get_model("billing", "Payment")
    for payment in Payment.objects.select_related("payee").filter(description__endswith=" UTC"):
        match = _OLD.match(payment.description)
        if match is None:
            continue
        head = match["head"]
        suffix = f" with {payment.payee.display_name}"
        if head.endswith(suffix):
            head = head.removesuffix(suffix)
        elif " with " in head:
            head = head.rsplit(" with ", 1)[0]
        payment.description = head
        payment.starts_at = datetime.strptime(match["when"], "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
        payment.save(update_fields=["description", "starts_at"])


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0003_audit_rows_protected"),
    ]

    operations = [
        migrations.AddField(
            model_name="payment",
            name="starts_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(split_descriptions, migrations.RunPython.noop),
    ]
