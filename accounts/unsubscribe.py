"""One-click unsubscribe from session reminders (RFC 8058), without signing in.

A reminder carries ``List-Unsubscribe: <https://…/reminders/off/<token>/>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``: a mail client POSTs to the URL, a
person opening it gets a page that asks first. The token is the user's id signed with
SECRET_KEY under its own salt, so nobody can make one for someone else's account; it does not
expire, because a reminder read weeks later must still be able to stop the next one. It only
ever turns reminders off: the link cannot do anything else with the account.
"""

from __future__ import annotations

from django.conf import settings
from django.core import signing
from django.urls import reverse

_SALT = "parley.accounts.reminders-unsubscribe"


class UnsubscribeLinkInvalid(Exception):
    """The token was not signed here for a user: mistyped, cut off, or made up."""


def reminders_unsubscribe_token(user_id: int) -> str:
    return signing.Signer(salt=_SALT).sign(str(user_id))


def reminders_unsubscribe_user_id(token: str) -> int:
    try:
        value = signing.Signer(salt=_SALT).unsign(token)
    except signing.BadSignature:
        raise UnsubscribeLinkInvalid(token) from None
    if not value.isdigit():
        raise UnsubscribeLinkInvalid(token)
    return int(value)


def reminders_unsubscribe_url(user_id: int) -> str:
    token = reminders_unsubscribe_token(user_id)
    return settings.SITE_URL + reverse("accounts:reminders_unsubscribe", args=[token])


def reminders_unsubscribe_headers(user_id: int) -> dict[str, str]:
    """The RFC 2369 + RFC 8058 headers a reminder carries."""
    return {
        "List-Unsubscribe": f"<{reminders_unsubscribe_url(user_id)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
