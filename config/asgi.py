"""The ASGI entry point served by Daphne: Django for HTTP, Channels consumers for WebSocket."""

from __future__ import annotations

import gc
import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Django must be set up before anything imports models (the routing below does).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from billing.checks import payment_provider_enforce  # noqa: E402
from config.routing import websocket_urlpatterns  # noqa: E402
from config.websocket import SameSiteOrigin  # noqa: E402

# Daphne runs no system checks: a production server must not start taking test cards.
payment_provider_enforce()

# A full collection of the cyclic garbage collector at most once per this many collections of
# the middle generation (CPython's default: 10). A full collection scans every object the
# process holds while its sockets wait, and an idle socket is some 180 of them: 0.4–0.7 s at
# 4,000 sockets, 2.2 s at 10,000 on this 2-core machine. CPython starts one whenever the objects
# moved to the oldest generation since the last grow by a quarter, and a socket's wait for its
# next message (its consumer's receive task and futures) outlives two younger collections and
# moves there at every heartbeat; so at 4,000 idle sockets a full collection came every 7–15 s,
# found nothing to free, and the heartbeats behind it missed the 1 s p99 (bench/signaling.py with
# gc.callbacks, 2026-12-07). With this bound one comes every few minutes at that load; younger
# collections still free short-lived cycles at once. What waits for the full one is the cycles
# of sockets that closed: their memory (at most the ~45 KiB a socket holds) returns then.
FULL_COLLECTION_AFTER = 1000
gc.set_threshold(*gc.get_threshold()[:2], FULL_COLLECTION_AFTER)


def websocket_stack(routes: list[Any]) -> Any:
    """WebSocket routes behind the checks every socket gets: an Origin from ALLOWED_HOSTS
    (a page on another site cannot open a socket with our cookies) and the session's user."""
    return SameSiteOrigin(AuthMiddlewareStack(URLRouter(routes)))


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": websocket_stack(websocket_urlpatterns),
    }
)
