"""WebSocket routes owned by rooms (signaling lives under /ws/rooms/)."""

from __future__ import annotations

from typing import Any

websocket_urlpatterns: list[Any] = []
