"""The ASGI entry point served by Daphne: Django for HTTP, Channels consumers for WebSocket."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything imports models (the routing below does).
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from billing.checks import payment_provider_enforce  # noqa: E402
from config.collector import SocketsCounted, collector_configure  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402
from config.websocket import SameSiteOrigin, SessionUser  # noqa: E402

# Daphne runs no system checks: a production server must not start taking test cards.
payment_provider_enforce()

# Full garbage collections when sockets have closed, not every few seconds of heartbeats.
collector_configure()


def websocket_stack(routes: list[Any]) -> Any:
    """WebSocket routes behind the checks every socket gets: an Origin from ALLOWED_HOSTS
    (a page on another site cannot open a socket with our cookies) and the session's user;
    each socket counted for the garbage collector (config/collector.py)."""
    return SocketsCounted(SameSiteOrigin(SessionMiddlewareStack(SessionUser(URLRouter(routes)))))


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_stack(websocket_urlpatterns),
    }
)
