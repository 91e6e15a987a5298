"""WebSocket routes owned by rooms: the signaling socket of each room."""

from __future__ import annotations

from typing import Any

from django.urls import path

from rooms.consumers import RoomConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/rooms/<int:room_id>/", RoomConsumer.as_asgi()),
]
