"""Email bodies that carry a secret (password-reset and verification links), sealed at rest.

Whoever can read the outbox (staff in admin, a database dump, a backup) must not be able to
take over an account with a link from it. The body is encrypted with a key derived from
SECRET_KEY when it is queued, decrypted only by the worker that sends it, and emptied once sent;
admin never shows it. A body sealed under an earlier SECRET_KEY cannot be opened any more: that
email is parked, and its person asks for a new link.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


class SealBroken(Exception):
    """The sealed body cannot be opened (SECRET_KEY changed, or the row was altered)."""


def _fernet() -> Fernet:
    digest = hashlib.sha256(b"parley.accounts.sealing:" + settings.SECRET_KEY.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(text: str) -> str:
    return _fernet().encrypt(text.encode()).decode("ascii")


def unseal(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode("ascii")).decode()
    except (InvalidToken, ValueError) as error:
        raise SealBroken("The sealed body cannot be opened (was SECRET_KEY changed?).") from error
