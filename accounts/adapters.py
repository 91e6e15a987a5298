from __future__ import annotations

import uuid
from typing import Any

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings
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
        ctx = {
            "request": request,
            "email": email,
            "current_site": get_current_site(request),
            "site_url": settings.SITE_URL,
        }
        ctx.update(context)
        # allauth renders `<prefix>_message.txt` and, where it exists, `<prefix>_message.html`
        # (templates/account/email/, on the product's email/base.html) as the alternative.
        message = self.render_mail(template_prefix, email, ctx)
        html = next(
            (
                str(content)
                for content, mimetype in getattr(message, "alternatives", [])
                if mimetype == "text/html"
            ),
            "",
        )
        services.email_queue_rendered(
            # Each call is a new email (a re-sent verification is wanted), hence a fresh key.
            key=f"allauth:{template_prefix.rsplit('/', 1)[-1]}:{uuid.uuid4().hex}",
            to=email,
            subject=message.subject,
            body=message.body,
            html=html,
            # Verification and password-reset links sign a person in: sealed (both bodies),
            # never shown.
            secret=True,
        )
