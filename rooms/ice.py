"""The ICE servers a participant's WebRTC connection may use, with short-lived TURN credentials.

coturn's shared-secret scheme (`--use-auth-secret`): the username is `<expiry unix time>:<who>`
and the password is base64(HMAC-SHA1(secret, username)); coturn recomputes the HMAC and refuses
an expired username, so no credential is stored anywhere and a leaked one dies on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings


def turn_credential(secret: str, name: str, expires_at: datetime) -> tuple[str, str]:
    """The (username, password) pair coturn accepts for `name` until `expires_at`."""
    username = f"{int(expires_at.timestamp())}:{name}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def turn_expiry(room_ends_at: datetime, now: datetime) -> datetime:
    """Until the room's end plus a margin (a call running to the last second keeps its relay),
    and never longer than the maximum from now."""
    return min(
        room_ends_at + timedelta(minutes=settings.TURN_VALID_AFTER_END_MINUTES),
        now + timedelta(seconds=settings.TURN_CREDENTIAL_MAX_SECONDS),
    )


def ice_servers(*, room_id: int, user_id: int, room_ends_at: datetime, now: datetime) -> list[Any]:
    """`RTCConfiguration.iceServers` for one participant of one room."""
    servers: list[dict[str, Any]] = []
    if settings.STUN_URLS:
        servers.append({"urls": list(settings.STUN_URLS)})
    if settings.TURN_URLS:
        username, credential = turn_credential(
            settings.TURN_SECRET, f"r{room_id}u{user_id}", turn_expiry(room_ends_at, now)
        )
        servers.append(
            {"urls": list(settings.TURN_URLS), "username": username, "credential": credential}
        )
    return servers
