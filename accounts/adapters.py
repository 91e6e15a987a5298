from __future__ import annotations

import uuid
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.contrib.sites.shortcuts import get_current_site

from accounts import services


class AccountAdapter(DefaultAccountAdapter):  # type: ignore[misc]
    """allauth, with its emails sent through the product's outbox.

    allauth sends verification and password-reset emails inside the request; a slow or broken
    mail server would then fail the request after the account was written. Queued instead,
    they leave with the commit and are retried by the outbox sweep.
    """

    def send_mail(self, template_prefix: str, email: str, context: dict[str, Any]) -> None:
        request = self.request
        ctx = {"request": request, "email": email, "current_site": get_current_site(request)}
        ctx.update(context)
        message = self.render_mail(template_prefix, email, ctx)
        services.email_queue_rendered(
            # Each call is a new email (a re-sent verification is wanted), hence a fresh key.
            key=f"allauth:{template_prefix.rsplit('/', 1)[-1]}:{uuid.uuid4().hex}",
            to=email,
            subject=message.subject,
            body=message.body,
            # Verification and password-reset links sign a person in: sealed, never shown.
            secret=True,
        )
