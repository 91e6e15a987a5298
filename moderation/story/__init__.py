"""The room's story: everything Parley recorded about one room, as one list in time order, in
the words staff use to decide a dispute.

Two steps. `load.story_load` fetches the room's records, a fixed set of queries whatever the
number of rows, and parses their JSON once (`payloads`). `build.story_build` hands them to
one plain function per kind of record (`rooms`, `money`, `moderation`), each returning
frozen `entries.Entry` values, and merges those in time order; `words.Teller` says names,
money, times (in the viewer's zone) and payload values the same way for all of them.

Each fact is told once. Where two records say the same thing (a RoomEvent "reported" and the
Report row, a payment's "capture_requested" event and the PaymentCommand), the richer record
is shown and the other one skipped; a record whose partner is missing is still shown.
"""

from __future__ import annotations

from datetime import UTC, tzinfo

from moderation.story.build import story_build
from moderation.story.entries import CATEGORIES, Entry, Fact, Link, Person, Story
from moderation.story.load import story_load

__all__ = ["CATEGORIES", "Entry", "Fact", "Link", "Person", "Story", "room_story"]


def room_story(room_id: int, zone: tzinfo = UTC) -> Story:
    """The story of one room, its times told in `zone`; Room.DoesNotExist when there is no
    such room."""
    return story_build(story_load(room_id), zone)
