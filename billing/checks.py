"""Deployment checks of billing: a production server never takes payments with the test card.

The local provider accepts any number that passes the Luhn check and "authorizes" it without
moving money. With DEBUG off and no Stripe key it used to be chosen silently, so a deployment
missing its key took bookings that were never paid. Now it is refused unless the deployment
says, with LOCAL_PAYMENTS_ALLOWED=1, that it wants it (a staging site, the test suite).

Refused where Django runs its checks (`manage.py check`, `check --deploy`, `migrate`,
`runserver`: an error stops each of them) and, through `payment_provider_enforce`, by any
entry point that runs no checks (the ASGI application Daphne serves).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Tags, register
from django.core.exceptions import ImproperlyConfigured

LOCAL_PROVIDER_REFUSED = "billing.E001"


def payment_provider_problems() -> list[CheckMessage]:
    if settings.DEBUG or settings.PAYMENT_PROVIDER != "local" or settings.LOCAL_PAYMENTS_ALLOWED:
        return []
    return [
        Error(
            "The built-in test-card payment provider is selected with DEBUG off: every "
            "booking would be confirmed without any money being held.",
            hint=(
                "Set STRIPE_SECRET_KEY (and STRIPE_PUBLISHABLE_KEY, STRIPE_WEBHOOK_SECRET) to "
                "take real payments, or set LOCAL_PAYMENTS_ALLOWED=1 if this deployment is "
                "meant to take test cards only (a staging site)."
            ),
            id=LOCAL_PROVIDER_REFUSED,
        )
    ]


@register(Tags.security)
def payment_provider_check(
    *,
    app_configs: Sequence[AppConfig] | None,
    databases: Sequence[str] | None,
    **kwargs: Any,
) -> list[CheckMessage]:
    # Not deploy=True: a deploy-only check would let `runserver` and `migrate` start a
    # server that takes test cards; this one stops every command that runs checks.
    return payment_provider_problems()


def payment_provider_enforce() -> None:
    """Refuse to start an entry point that runs no system checks (Daphne's ASGI app)."""
    problems = payment_provider_problems()
    if problems:
        problem = problems[0]
        raise ImproperlyConfigured(f"{problem.id}: {problem.msg} {problem.hint}")


@register()
def command_lease_check(
    *,
    app_configs: Sequence[AppConfig] | None,
    databases: Sequence[str] | None,
    **kwargs: Any,
) -> list[CheckMessage]:
    """A Celery worker killed at the money queue's hard time limit must be gone before its
    command's lease lets another worker send the same command, or two of them talk to the
    provider about one payment at once. (A check, not a refusal in settings: a process that
    runs no Celery task, such as a test's worker with a short lease, may set any lease.)"""
    hard = settings.CELERY_QUEUE_TIME_LIMITS["money"][1]
    if settings.PAYMENT_COMMAND_LEASE_SECONDS > hard:
        return []
    return [
        Error(
            "PAYMENT_COMMAND_LEASE_SECONDS must be longer than the money queue's hard time "
            f"limit ({hard} s).",
            hint="Leave it at its default (120), or set it above the limit.",
            id="billing.E002",
        )
    ]
