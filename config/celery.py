"""The Celery application: tasks from every app, and the beat schedule of periodic sweeps."""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("parley")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    # Reservations are also ignored at read time once past; the sweep frees their rooms.
    "rooms-reservations-expire": {"task": "rooms.tasks.reservations_expire", "schedule": 30.0},
    "rooms-reminders-queue": {"task": "rooms.tasks.reminders_queue", "schedule": 60.0},
    # The room state machine's timed transitions; tasks at the exact moments do the same.
    "rooms-advance": {"task": "rooms.tasks.rooms_advance", "schedule": 10.0},
    # Payment commands and webhook events whose task was lost, or that wait for a retry.
    "billing-commands-send-due": {"task": "billing.tasks.commands_send_due", "schedule": 30.0},
    "billing-webhooks-process-pending": {
        "task": "billing.tasks.webhooks_process_pending",
        "schedule": 60.0,
    },
    # Holds for sessions booked far ahead are placed a day before; payouts after 72 h.
    "billing-holds-place-due": {"task": "billing.tasks.holds_place_due", "schedule": 60.0},
    "billing-payouts-due-create": {"task": "billing.tasks.payouts_due_create", "schedule": 600.0},
    "accounts-email-sweep-unsent": {
        "task": "accounts.tasks.email_sweep_unsent",
        "schedule": 60.0,
    },
    # Sessions of people who never log out pile up; Django leaves their removal to us.
    "accounts-sessions-clear-expired": {
        "task": "accounts.tasks.sessions_clear_expired",
        "schedule": crontab(minute=17, hour=3),
    },
}
