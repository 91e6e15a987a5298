"""Building a room's story from its loaded records: each kind of record turned into entries
by its own function, all merged and put in time order here."""

from __future__ import annotations

from dataclasses import replace
from datetime import tzinfo
from itertools import chain

from django.db import connection

from moderation.story import moderation, money, rooms
from moderation.story.entries import Story
from moderation.story.load import Records
from moderation.story.words import Teller, offset_text

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


def story_build(records: Records, zone: tzinfo) -> Story:
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
