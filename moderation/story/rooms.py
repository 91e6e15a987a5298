"""The room's own records as entries: its events, who was present, the media between them;
and the header's facts and call quality."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from moderation.models import DisputeState, StaffActionKind
from moderation.story.entries import Entry, Fact, QualityRow
from moderation.story.load import Records
from moderation.story.payloads import Payload
from moderation.story.words import Teller, choice, duration_text
from rooms.models import CloseReason, RoomEvent, RoomState

PRESENCE_ENDS = {
    "left": "left",
    "dropped": "the connection dropped",
    "stale": "heartbeats stopped (closed by the sweeper at the last one)",
    "replaced": "replaced by a newer connection",
    "removed": "removed from the room",
    "room_closed": "the room closed",
}
CANDIDATE_TYPES = {
    "host": "direct (same network)",
    "srflx": "direct through NAT (STUN)",
    "prflx": "direct (peer-reflexive)",
    "relay": "relayed through TURN",
}
_TITLES = {
    "published": "Group session published",
    "seat_reserved": "Seat reserved, waiting for payment",
    "seat_confirmed": "Seat confirmed: the hold is placed",
    "seat_canceled": "Seat canceled",
    "reservation_expired": "Reservation expired unpaid",
    "rescheduled": "Rescheduled",
    "expert_no_show": "The expert did not join",
    "disputed": "Dispute opened",
}


def presence_entries(records: Records, teller: Teller) -> list[Entry]:
    resumed = {
        row.data.connection
        for row in records.room_events
        if row.record.kind == "presence_opened" and row.data.resumed
    }
    entries = []
    for presence in records.presences:
        who = teller.person(presence.user_id)
        role = f"{who.role.capitalize()} " if who and who.role else ""
        facts = _interval_facts(teller, presence.opened_at, presence.closed_at)
        if presence.closed_at is None:
            facts.append(Fact("Last heartbeat", teller.clock(presence.last_heartbeat_at)))
        else:
            reason = presence.close_reason
            facts.append(Fact("Ended because", PRESENCE_ENDS.get(reason, reason or "—")))
        facts.append(Fact("Connection", f"{presence.connection_id} {presence.process}".strip()))
        joined = "rejoined" if presence.connection_id in resumed else "joined"
        entries.append(
            Entry(
                at=presence.opened_at,
                category="presence",
                title=f"{role}{who.name if who else '?'} {joined}",
                who=who,
                facts=tuple(facts),
                tone="warn" if presence.close_reason in ("dropped", "stale", "removed") else "",
                pk=presence.pk,
            )
        )
    return entries


def media_entries(records: Records, teller: Teller) -> list[Entry]:
    entries = []
    for link in records.media_links:
        client = teller.person(link.client_id)
        facts = _interval_facts(teller, link.started_at, link.ended_at)
        facts.append(Fact("Reported by", teller.name(link.reported_by_id)))
        if link.candidate_type:
            path = CANDIDATE_TYPES.get(link.candidate_type, link.candidate_type)
            facts.append(Fact("Path", f"{path} ({link.candidate_type})"))
        entries.append(
            Entry(
                at=link.started_at,
                category="media",
                title=f"Media up between the expert and {client.name if client else '?'}",
                who=teller.person(link.reported_by_id),
                facts=tuple(facts),
                pk=link.pk,
            )
        )
    return entries


def room_event_entries(records: Records, teller: Teller) -> list[Entry]:
    """The room's events, but those another record tells with more (a presence, a report, a
    staff action, the close's own event)."""
    kinds = {row.record.kind for row in records.room_events}
    # The disputes staff decided, the people staff removed: the staff actions tell them.
    actions = [row.record for row in records.staff_actions]
    told: dict[str, set[int | str | None]] = {
        "presence_opened": {presence.connection_id for presence in records.presences},
        "reported": {report.pk for report in records.reports},
        "disputed": {dispute.pk for dispute in records.disputes},
        "dispute_resolved": {
            action.dispute_id
            for action in actions
            if action.kind == StaffActionKind.DISPUTE_RESOLVE
        },
        "participant_removed": {
            action.subject_id
            for action in actions
            if action.kind == StaffActionKind.PARTICIPANT_REMOVE
        },
    }
    entries = []
    for row in records.room_events:
        event, data = row.record, row.data
        key = {
            "presence_opened": data.connection,
            "reported": data.report,
            "disputed": data.dispute,
            "dispute_resolved": data.dispute,
            "participant_removed": data.user,
        }.get(event.kind)
        if key is not None and key in told[event.kind]:
            continue
        if event.kind == "card_saved":
            continue  # the payment's own "card_saved" event tells it
        if "closed" in kinds and (
            event.kind == "expert_no_show"  # the close's reason says it
            or (event.kind == "state_changed" and data.new == RoomState.CLOSED)
        ):
            continue  # the "closed" event says it, with what each seat cost
        entries.append(_room_event_entry(event, data, teller))
    return entries


def _room_event_entry(event: RoomEvent, data: Payload, teller: Teller) -> Entry:
    kind = event.kind
    category = {"disputed": "dispute", "dispute_resolved": "dispute", "reported": "report"}
    tone = "warn" if kind in ("pair_blocked", "expert_no_show", "reservation_expired") else ""
    facts = teller.facts(data, skip=("seat",) if data.seat is not None else ())
    if kind == "state_changed":
        title = f"Room: {choice(RoomState, data.old)} → {choice(RoomState, data.new)}"
        facts = [Fact("Why", data.reason)] if data.reason else []
    elif kind == "closed":
        title = "Room closed"
        facts = [Fact("Why", choice(CloseReason, data.reason)), *_close_late_facts(data, teller)]
        for seat in data.seats:
            parts = [teller.value(seat.value("outcome")).replace("_", " ")]
            if (billable := seat.value("billable_seconds")) is not None:
                parts.append(f"{teller.value(billable)} billable")
            if (charged := seat.value("charged_minor")) is not None:
                parts.append(f"charged {teller.value(charged)}")
            client = teller.name(seat.client, email=False)
            facts.append(Fact(f"Seat of {client}", " · ".join(parts)))
    elif kind == "dispute_resolved":
        dispute = "?" if data.dispute is None else data.dispute
        title = f"Dispute #{dispute} decided: {choice(DisputeState, data.state)}"
    elif kind == "participant_removed":
        title, tone = f"{teller.value(data.value('user'))} was removed", "warn"
    else:
        titles = {
            **_TITLES,
            "booked": f"Booked by the client for {teller.value(data.value('starts_at'))}",
            "pair_blocked": f"Blocked {teller.value(data.value('blocked'))}",
            "rated": f"Rated the session {teller.value(data.value('stars'))}★",
        }
        title = titles.get(kind, kind.replace("_", " ").capitalize())
        title += "" if data.seat is None else f" (seat #{data.seat})"
        if kind in ("booked", "pair_blocked", "rated"):
            # Told in the title.
            facts = [fact for fact in facts if fact.label not in ("Starts at", "Blocked", "Stars")]
    return Entry(
        at=event.created_at,
        category=category.get(kind, "room"),
        title=title,
        who=teller.person(event.actor_id),
        facts=tuple(facts),
        tone=tone,
        pk=event.pk,
    )


def _close_late_facts(data: Payload, teller: Teller) -> list[Fact]:
    """A close that ran after the call's end (no worker at the paid end) says both times:
    the call, and the bill, end at the paid end; the close itself ran later."""
    ended = teller.room.closed_at
    if data.ran_at is None or ended is None or data.ran_at - ended < timedelta(seconds=1):
        return []
    return [
        Fact("Call ended (billed to)", teller.clock(ended)),
        Fact(
            "Close ran at",
            f"{teller.clock(data.ran_at)}, "
            f"{duration_text((data.ran_at - ended).total_seconds())} late",
        ),
    ]


def _interval_facts(teller: Teller, start: datetime, end: datetime | None) -> list[Fact]:
    if end is None:
        return [Fact("Until", "still open")]
    return [
        Fact("Until", teller.clock(end, start)),
        Fact("Duration", duration_text((end - start).total_seconds())),
    ]


def room_facts(records: Records, teller: Teller) -> tuple[Fact, ...]:
    room = records.room
    start = room.starts_at.astimezone(teller.zone)
    facts = [
        Fact("State", choice(RoomState, room.state)),
        Fact(
            "Scheduled",
            f"{start:%Y-%m-%d %H:%M:%S} → {room.ends_at.astimezone(teller.zone):%H:%M:%S} "
            f"({duration_text((room.ends_at - room.starts_at).total_seconds())})",
        ),
    ]
    if room.opened_at:
        facts.append(Fact("Lobby opened", teller.clock(room.opened_at, room.starts_at)))
    live = teller.span(room.live_at, room.closed_at, room.starts_at) if room.live_at else ""
    facts.append(Fact("Live window", live or "never live"))
    if room.closed_at:
        reason = choice(CloseReason, room.close_reason)
        facts.append(Fact("Closed", f"{teller.clock(room.closed_at, room.starts_at)}: {reason}"))
    if room.cancel_reason:
        facts.append(Fact("Canceled", room.cancel_reason_display))
    per_minute = " a started minute" if room.pricing == "per_minute" else ""
    facts.append(
        Fact(
            "Terms",
            f"{room.get_pricing_display()}: {teller.money(room.price_minor)}{per_minute}; at "
            f"most {teller.money(room.max_amount_minor)}; no-show fee "
            f"{room.no_show_fee_percent} %, late cancel {room.late_cancel_fee_percent} %",
        )
    )
    return tuple(facts)


def quality_rows(records: Records, teller: Teller) -> tuple[QualityRow, ...]:
    day = records.room.starts_at
    return tuple(
        replace(
            row,
            span=f"{teller.clock(row.first_at, day)} → {teller.clock(row.last_at, row.first_at)}",
        )
        for row in records.quality
    )
