"""The room's own records: its events, who was present, the media between them, and the
quality each side of a call reported."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.db.models import Aggregate, Count, FloatField, Max, Min
from django.utils.dateparse import parse_datetime

from moderation.story.base import _BuilderBase
from moderation.story.records import Entry, Fact, Person, QualityRow
from moderation.story.words import (
    _close_reason,
    _dispute_state,
    _room_state,
    clock_text,
    duration_text,
)
from rooms.models import CallStats, MediaLink, Presence, Room, RoomEvent, RoomState

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


class _Median(Aggregate):
    """The median on PostgreSQL; elsewhere (SQLite in development) the mean stands in."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(0.5) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler, connection, function="AVG", template="%(function)s(%(expressions)s)", **extra
        )


def _call_quality(room: Room) -> list[dict[str, Any]]:
    """One row per reporter and peer, aggregated in the database: a call reports its stats
    every few seconds, far too many rows to list."""
    return list(
        CallStats.objects.filter(room=room)
        .values(
            "reporter_id",
            "reporter__display_name",
            "reporter__email",
            "peer_id",
            "peer__display_name",
            "peer__email",
        )
        .annotate(
            samples=Count("pk"),
            rtt=_Median("rtt_ms"),
            loss=_Median("packet_loss"),
            first_at=Min("created_at"),
            last_at=Max("created_at"),
        )
        .order_by("reporter_id", "peer_id")
    )


class _RoomEntries(_BuilderBase):
    """Entries of the room's events, presences and media links; rows of call quality."""

    def _presence(self, presence: Presence) -> Entry:
        who = self.person(presence.user)
        opened = self.opened_events.get(presence.connection_id)
        resumed = bool(opened and (opened.data or {}).get("resumed"))
        role = f"{who.role.capitalize()} " if who and who.role else ""
        facts = self._interval_facts(presence.opened_at, presence.closed_at)
        if presence.closed_at is None:
            facts.append(Fact("Last heartbeat", clock_text(presence.last_heartbeat_at)))
        else:
            reason = presence.close_reason
            facts.append(Fact("Ended because", PRESENCE_ENDS.get(reason, reason or "—")))
        facts.append(Fact("Connection", f"{presence.connection_id} {presence.process}".strip()))
        return Entry(
            at=presence.opened_at,
            category="presence",
            title=f"{role}{who.name if who else '?'} {'rejoined' if resumed else 'joined'}",
            who=who,
            facts=facts,
            tone="warn" if presence.close_reason in ("dropped", "stale", "removed") else "",
            pk=presence.pk,
        )

    def _close_late_facts(self, data: dict[str, Any]) -> list[Fact]:
        """A close that ran after the call's end (no worker at the paid end) says both times:
        the call, and the bill, end at the paid end; the close itself ran later."""
        ran_at = parse_datetime(str(data.get("ran_at") or ""))
        ended = self.room.closed_at
        if ran_at is None or ended is None or ran_at - ended < timedelta(seconds=1):
            return []
        return [
            Fact("Call ended (billed to)", clock_text(ended)),
            Fact(
                "Close ran at",
                f"{clock_text(ran_at)}, {duration_text((ran_at - ended).total_seconds())} late",
            ),
        ]

    def _interval_facts(self, start: datetime, end: datetime | None) -> list[Fact]:
        if end is None:
            return [Fact("Until", "still open")]
        return [
            Fact("Until", clock_text(end, start)),
            Fact("Duration", duration_text((end - start).total_seconds())),
        ]

    def _media_link(self, link: MediaLink) -> Entry:
        client = self.person(link.client)
        facts = self._interval_facts(link.started_at, link.ended_at)
        facts.append(Fact("Reported by", self.name_of(link.reported_by_id)))
        if link.candidate_type:
            path = CANDIDATE_TYPES.get(link.candidate_type, link.candidate_type)
            facts.append(Fact("Path", f"{path} ({link.candidate_type})"))
        return Entry(
            at=link.started_at,
            category="media",
            title=f"Media up between the expert and {client.name if client else '?'}",
            who=self.person(link.reported_by),
            facts=facts,
            pk=link.pk,
        )

    def _room_event(self, event: RoomEvent) -> Entry | None:
        data: dict[str, Any] = event.data or {}
        words = self._room_event_words(event.kind, data)
        if words is None:
            return None
        title, category, facts, tone = words
        return Entry(
            at=event.created_at,
            category=category,
            title=title,
            who=self.person(event.actor),
            facts=facts,
            tone=tone,
            pk=event.pk,
        )

    def _room_event_words(
        self, kind: str, data: dict[str, Any]
    ) -> tuple[str, str, list[Fact], str] | None:
        """(title, category, facts, tone) of a room event, or None when another record tells
        the same fact."""
        other = self.data_facts(data, skip=("seat",))
        seat = f" (seat #{data['seat']})" if "seat" in data else ""
        if kind == "state_changed":
            if data.get("new") == RoomState.CLOSED and "closed" in self.room_event_kinds:
                return None  # the "closed" event says it, with what each seat cost
            old, new = (_room_state(data.get(key)) for key in ("old", "new"))
            facts = [Fact("Why", data["reason"])] if data.get("reason") else []
            return f"Room: {old} → {new}", "room", facts, ""
        if kind == "closed":
            facts = [Fact("Why", _close_reason(data.get("reason")))]
            facts.extend(self._close_late_facts(data))
            for seat_data in data.get("seats") or []:
                client = self.name_of(seat_data.get("client"), email=False)
                facts.append(Fact(f"Seat of {client}", self._meter_summary(seat_data)))
            return "Room closed", "room", facts, ""
        if kind == "expert_no_show" and "closed" in self.room_event_kinds:
            return None  # the close's reason says it
        if kind == "presence_opened" and data.get("connection") in self.connections:
            return None  # told with the presence, from its start to its end
        if kind == "reported" and data.get("report") in self.report_ids:
            return None
        if kind == "disputed" and data.get("dispute") in self.dispute_ids:
            return None
        if kind == "dispute_resolved":
            if data.get("dispute") in self.disputes_decided_by_staff:
                return None  # the staff action tells it, with the reason
            state = _dispute_state(data.get("state"))
            return f"Dispute #{data.get('dispute')} decided: {state}", "dispute", other, ""
        if kind == "participant_removed":
            if data.get("user") in self.removed_by_staff:
                return None  # the staff action tells it
            return f"{self.name_of(data.get('user'))} was removed", "room", other, "warn"
        if kind == "card_saved":
            return None  # the payment's own "card_saved" event tells it
        titles = {
            "booked": f"Booked by the client for {self.value('starts_at', data.get('starts_at'))}",
            "published": "Group session published",
            "seat_reserved": "Seat reserved, waiting for payment",
            "seat_confirmed": "Seat confirmed: the hold is placed",
            "seat_canceled": "Seat canceled",
            "reservation_expired": "Reservation expired unpaid",
            "rescheduled": "Rescheduled",
            "expert_no_show": "The expert did not join",
            "pair_blocked": f"Blocked {self.name_of(data.get('blocked'))}",
            "rated": f"Rated the session {data.get('stars')}★",
            "disputed": "Dispute opened",
        }
        title = titles.get(kind, kind.replace("_", " ").capitalize())
        category = "dispute" if kind == "disputed" else "report" if kind == "reported" else "room"
        tone = "warn" if kind in ("pair_blocked", "expert_no_show", "reservation_expired") else ""
        if kind in ("booked", "pair_blocked", "rated"):
            other = [fact for fact in other if fact.label not in ("Starts at", "Blocked", "Stars")]
        return title + seat, category, other, tone

    def _meter_summary(self, seat: dict[str, Any]) -> str:
        parts = [str(seat.get("outcome", "—")).replace("_", " ")]
        if "billable_seconds" in seat:
            parts.append(f"{self.value('billable_seconds', seat['billable_seconds'])} billable")
        if "charged_minor" in seat:
            parts.append(f"charged {self.money(seat['charged_minor'])}")
        return " · ".join(parts)

    def _quality_row(self, row: dict[str, Any]) -> QualityRow:
        def who(prefix: str) -> Person:
            pk = row[f"{prefix}_id"]
            return self.people.get(pk) or Person(
                pk, row[f"{prefix}__display_name"], row[f"{prefix}__email"], ""
            )

        return QualityRow(
            reporter=who("reporter"),
            peer=who("peer"),
            samples=row["samples"],
            rtt_ms=row["rtt"],
            packet_loss=row["loss"],
            span=f"{clock_text(row['first_at'], self.room.starts_at)} → "
            f"{clock_text(row['last_at'], row['first_at'])}",
        )
