"""Sign-in emails queued before bodies were sealed still hold their links in plain text:
seal the unsent ones and empty the sent ones, as the outbox now does for new ones."""

from django.db import migrations


def seal_signin_emails(apps, schema_editor):
    from accounts.sealing import seal

    OutboundEmail = apps.get_model("accounts", "OutboundEmail")
    plain = OutboundEmail.objects.filter(key__startswith="allauth:", sealed=False)
    # Delivered: the link lives in the person's mailbox, and nowhere here.
    plain.filter(sent_at__isnull=False).update(body="", sealed=True)
    for email in plain.filter(sent_at__isnull=True):
        email.body = seal(email.body)
        email.sealed = True
        email.save(update_fields=["body", "sealed"])


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_email_parking_sealing_names_clean"),
    ]

    operations = [
        # Not reversible in substance: a sealed body is not unsealed again.
        migrations.RunPython(seal_signin_emails, migrations.RunPython.noop),
    ]
