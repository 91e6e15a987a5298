from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


class RoomsError(Exception):
    """A refused action in rooms; the message is written for the person who asked."""


class InvalidTransition(RoomsError):
    pass


class NotAllowed(RoomsError):
    """The action exists, but not for this person (a client ending the expert's session)."""


class BookingRefused(RoomsError):
    pass


@dataclass
class SlotTaken(RoomsError):
    """Someone else got the slot first; `alternatives` are the nearest free slots."""

    alternatives: list[datetime] = field(default_factory=list)

    def __str__(self) -> str:
        return "This slot was just taken. Pick another time."
