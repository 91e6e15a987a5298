"""Every WebSocket route of the product, gathered from the apps that own the consumers."""

from __future__ import annotations

from typing import Any

from rooms.routing import websocket_urlpatterns as rooms_websocket_urlpatterns

websocket_urlpatterns: list[Any] = [*rooms_websocket_urlpatterns]
