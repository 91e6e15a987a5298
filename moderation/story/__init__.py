"""The room's story: everything Parley recorded about one room, as one list in time order, in
the words staff use to decide a dispute.

Each fact is told once. Where two records say the same thing (a RoomEvent "reported" and the
Report row, a payment's "capture_requested" event and the PaymentCommand), the richer record
is shown and the other one skipped; a record whose partner is missing is still shown.

The queries are a fixed set (one per source, users joined in), whatever the number of rows:
a room under dispute can have thousands of presences and stats, and the page must stay fast.
"""

from moderation.story.builder import room_story
from moderation.story.money import (
    COMMAND_TITLES,
    PAYMENT_EVENT_TITLES,
    PAYMENT_STATE_TITLES,
    WEBHOOK_TITLES,
)
from moderation.story.records import (
    CATEGORIES,
    Entry,
    Fact,
    Link,
    Person,
    QualityRow,
    SeatSummary,
    Story,
)
from moderation.story.rooms import CANDIDATE_TYPES, PRESENCE_ENDS
from moderation.story.words import LABELS, clock_text, duration_text, moment_text

__all__ = [
    "CANDIDATE_TYPES",
    "CATEGORIES",
    "COMMAND_TITLES",
    "LABELS",
    "PAYMENT_EVENT_TITLES",
    "PAYMENT_STATE_TITLES",
    "PRESENCE_ENDS",
    "WEBHOOK_TITLES",
    "Entry",
    "Fact",
    "Link",
    "Person",
    "QualityRow",
    "SeatSummary",
    "Story",
    "clock_text",
    "duration_text",
    "moment_text",
    "room_story",
]
