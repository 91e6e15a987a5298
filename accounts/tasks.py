from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts import selectors, services
from config.postgresql.errors import DATABASE_ERRORS


# One count of attempts: the row's (`email_send` parks the email at EMAIL_MAX_ATTEMPTS); the
# task's own retries stop at the same number, they never outlive it. A mail server that does
# not answer (OSError) and PostgreSQL restarting are both tried again (a task that names its
# own autoretry_for replaces DatabaseRetryingTask's).
@shared_task(
    autoretry_for=(OSError, *DATABASE_ERRORS),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=settings.EMAIL_MAX_ATTEMPTS,
)
def email_send_task(email_id: int) -> bool:
    return services.email_send(email_id)


@shared_task(
    autoretry_for=(OSError, *DATABASE_ERRORS),
    retry_backoff=True,
    retry_backoff_max=600,
    max_retries=settings.EMAIL_MAX_ATTEMPTS,
)
def email_send_many_task(email_ids: list[int]) -> int:
    """Emails decided together (a booking's confirmations), one message to the broker. Each
    is tried even when one before it fails; a retry then sends only those still unsent."""
    sent = 0
    failure: OSError | None = None
    for email_id in email_ids:
        try:
            sent += services.email_send(email_id)
        except OSError as error:
            failure = failure or error
    if failure is not None:
        raise failure
    return sent


@shared_task
def email_sweep_unsent() -> int:
    """Safety net for emails whose task was lost (broker down at commit, worker crash)."""
    ids = selectors.email_unsent_ids()
    for email_id in ids:
        email_send_task.delay(email_id)
    return len(ids)


@shared_task
def sessions_clear_expired() -> int:
    return services.sessions_clear_expired()
