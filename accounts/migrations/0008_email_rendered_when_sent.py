from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0007_email_html_headers_booking_reminders"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboundemail",
            name="renderer",
            field=models.CharField(blank=True, default="", max_length=100),
        ),
        migrations.AddField(
            model_name="outboundemail",
            name="renderer_args",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
