"""The room's story: everything Parley recorded about one room, as one list in time order, in
the words staff use to decide a dispute.

Two steps. `load.story_load` fetches the room's records, a fixed set of queries whatever the
number of rows, and parses their JSON once (`payloads`). `room_story` below hands them to one
plain function per kind of record (`rooms`, `money`, `moderation`), each returning frozen
`entries.Entry` values, and merges those in time order; `words.Teller` says names,
money, times (in the viewer's zone) and payload values the same way for all of them.

Each fact is told once. Where two records say the same thing (a RoomEvent "reported" and the
Report row, a payment's "capture_requested" event and the PaymentCommand), the richer record
is shown and the other one skipped; a record whose partner is missing is still shown.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, tzinfo
from itertools import chain

from django.db import connection

from moderation.story import moderation, money, rooms
from moderation.story.entries import CATEGORIES, Entry, Fact, Link, Person, Story
from moderation.story.load import story_load
from moderation.story.words import Teller, offset_text

__all__ = ["CATEGORIES", "Entry", "Fact", "Link", "Person", "Story", "room_story"]

ENTRY_BUILDERS = (
    rooms.room_event_entries,
    rooms.presence_entries,
    rooms.media_entries,
    money.settlement_entries,
    money.command_entries,
    money.payment_event_entries,
    money.webhook_entries,
    moderation.report_entries,
    moderation.dispute_entries,
    moderation.staff_action_entries,
)


def room_story(room_id: int, zone: tzinfo = UTC) -> Story:
    """The story of one room, its times told in `zone`; Room.DoesNotExist when there is no
    such room."""
    records = story_load(room_id)
    room = records.room
    payers = {seat.payment_id: seat.client_id for seat in records.seats if seat.payment_id}
    teller = Teller(room, records.people, zone, payers)
    entries = sorted(
        chain.from_iterable(build(records, teller) for build in ENTRY_BUILDERS),
        key=lambda entry: entry.sort_key,
    )
    base = room.live_at or room.starts_at
    return Story(
        room=room,
        expert=records.people[room.expert_id],
        seats=money.seat_summaries(records, teller),
        entries=tuple(replace(entry, offset=offset_text(entry.at - base)) for entry in entries),
        facts=rooms.room_facts(records, teller),
        totals=money.totals(records, teller),
        quality=rooms.quality_rows(records, teller),
        offset_base="the live start" if room.live_at else "the scheduled start",
        quality_average="median" if connection.vendor == "postgresql" else "mean",
        zone=str(zone),
    )
