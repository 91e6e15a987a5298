"""What rooms tell the layer above (moderation), sent inside the transaction that made the
change, so a receiver's writes commit or roll back with it (STYLE.md: lower layers declare)."""

from django.dispatch import Signal

# A room closed. Arguments: room, reason (a CloseReason value).
room_closed = Signal()
