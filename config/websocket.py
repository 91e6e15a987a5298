"""The checks every WebSocket gets before its consumer: a page on another site must not open a
socket that carries our session cookie.

Channels' own `AllowedHostsOriginValidator` refuses during the handshake, which a browser sees
as a failed connection with no reason. Here the socket is accepted, told why in the protocol's
`error` message, and closed with code 4406 (docs/SIGNALING.md), so a client can say what is
wrong.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import validate_host

FORBIDDEN_ORIGIN = 4406


def origin_allowed(scope: dict[str, Any]) -> bool:
    """The Origin header names one of ALLOWED_HOSTS (a missing one is refused: browsers always
    send it, and other clients can)."""
    origin = dict(scope.get("headers", [])).get(b"origin")
    if not origin:
        return False
    try:
        host = urlsplit(origin.decode("latin-1")).hostname
    except ValueError:
        return False
    return bool(host) and validate_host(host, settings.ALLOWED_HOSTS)


class SameSiteOrigin:
    """ASGI middleware: WebSockets from a foreign origin are refused with a reason."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket" or origin_allowed(scope):
            return await self.app(scope, receive, send)
        message = await receive()
        if message["type"] != "websocket.connect":
            return None
        error = {
            "v": 1,
            "type": "error",
            "code": "forbidden_origin",
            "message": "This socket must be opened from a page of this site.",
        }
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps(error)})
        await send({"type": "websocket.close", "code": FORBIDDEN_ORIGIN})
        return None
