"""The checks every WebSocket gets before its consumer: a page on another site must not open a
socket that carries our session cookie.

Channels' own `AllowedHostsOriginValidator` refuses during the handshake, which a browser sees
as a failed connection with no reason. Here the socket is accepted, told why in the protocol's
`error` message, and closed with code 4406 (docs/SIGNALING.md), so a client can say what is
wrong.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddleware
from django.conf import settings
from django.http.request import validate_host

from config.postgresql.errors import DATABASE_ERRORS
from rooms.consumers import RoomConsumer

logger = logging.getLogger(__name__)

FORBIDDEN_ORIGIN = 4406


DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_parts(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin, with the scheme's default port filled in."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    # A fully qualified name may end with a dot; Django's host check drops it too.
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower().removesuffix(".")
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def _socket_is_secure(scope: dict[str, Any], headers: dict[bytes, bytes]) -> bool:
    if scope.get("scheme") == "wss":
        return True
    # Behind a TLS-terminating proxy trusted for it, as Django decides for requests.
    proxy: tuple[str, str] | None = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name = proxy[0].removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        forwarded = headers.get(name, b"").decode("latin-1").split(",")[0].strip()
        return forwarded == proxy[1]
    return False


def _trusted(origin: tuple[str, str, int]) -> bool:
    """The site's own public origin (SITE_URL) and CSRF_TRUSTED_ORIGINS, scheme, host and port
    all equal (CSRF_TRUSTED_ORIGINS may name subdomains as https://*.example.com)."""
    for entry in [settings.SITE_URL, *settings.CSRF_TRUSTED_ORIGINS]:
        wildcard = "://*." in entry
        trusted = _origin_parts(entry.replace("://*.", "://", 1))
        if trusted is None:
            continue
        scheme, host, port = trusted
        if (origin[0], origin[2]) != (scheme, port):
            continue
        if origin[1] == host or (wildcard and origin[1].endswith("." + host)):
            return True
    return False


def origin_allowed(scope: dict[str, Any]) -> bool:
    """The page that opens the socket is of this site: its Origin is SITE_URL or a trusted
    origin, or it is the socket's own origin (the same scheme, http for ws and https for wss,
    the same host and port as the handshake's Host, and a host in ALLOWED_HOSTS). Scheme and
    port count: http://parley.example:8080 is another site than https://parley.example. A
    missing Origin is refused (browsers always send it, and other clients can)."""
    headers = dict(scope.get("headers", []))
    origin = _origin_parts(headers.get(b"origin", b"").decode("latin-1"))
    if origin is None:
        return False
    if _trusted(origin):
        return True
    scheme, host, port = origin
    if scheme != ("https" if _socket_is_secure(scope, headers) else "http"):
        return False
    # urlsplit drops an IPv6 literal's brackets; ALLOWED_HOSTS writes them, as Host does.
    if not validate_host(f"[{host}]" if ":" in host else host, settings.ALLOWED_HOSTS):
        return False
    host_header = headers.get(b"host", b"").decode("latin-1").lower()
    if not host_header:
        # In-process clients (tests) send no Host: only the scheme's default port is ours.
        return port == DEFAULT_PORTS[scheme]
    own = _origin_parts(f"{scheme}://{host_header}")
    return own == origin


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


class SessionUser(AuthMiddleware):  # type: ignore[misc]
    """Channels' AuthMiddleware (the session's user in the scope), except that a socket whose
    session cannot be read because PostgreSQL is down or restarting is told `unavailable` and
    closed 4503, as the room's consumer tells one, and the page dials again. Channels reads the
    user before any consumer runs, so the error escaped every handler: Daphne logged it as an
    exception inside the application and failed the handshake (found by bench/faults.py)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        scope = dict(scope)
        self.populate_scope(scope)
        try:
            await self.resolve_scope(scope)
        except DATABASE_ERRORS as down:
            logger.warning("Database unavailable reading a socket's session: %s", down)
            await RoomConsumer.unavailable_handshake(receive, send)
            return None
        return await self.inner(scope, receive, send)
