"""What PostgreSQL being down or restarting raises: Django's wrapped errors, and psycopg's own
where a pool raises them unwrapped. The socket answers them `unavailable`; a Celery task tries
again (config/celery.py)."""

from __future__ import annotations

import psycopg
from django.db import InterfaceError, OperationalError

DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError,
    InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
