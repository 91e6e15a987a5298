"""Loads a room's records, one query a source, and puts their entries in time order."""

from __future__ import annotations

from typing import Any

from django.db import connection

from billing.models import PaymentCommand, PaymentEvent
from moderation.models import Dispute, Report
from moderation.story.header import _Header
from moderation.story.moderation import _ModerationEntries, _staff_actions_of
from moderation.story.money import _MoneyEntries, _settlement_of, _webhooks_of
from moderation.story.records import Story
from moderation.story.rooms import _call_quality, _RoomEntries
from moderation.story.words import _offset_text
from rooms.models import MediaLink, Presence, Rating, Room, RoomEvent, Seat


def room_story(room_id: int) -> Story:
    """The story of one room; Room.DoesNotExist when there is no such room."""
    room = Room.objects.select_related("expert").get(pk=room_id)
    seats = list(
        Seat.objects.filter(room=room)
        .select_related("client", "payment__settlement")
        .order_by("created_at", "pk")
    )
    story = _Builder(room, seats)
    payments = [seat.payment for seat in seats if seat.payment is not None]
    payment_ids = [payment.pk for payment in payments]
    story.load(
        room_events=RoomEvent.objects.filter(room=room).select_related("actor"),
        presences=Presence.objects.filter(room=room).select_related("user"),
        media_links=MediaLink.objects.filter(room=room).select_related("client", "reported_by"),
        payment_events=PaymentEvent.objects.filter(payment_id__in=payment_ids).select_related(
            "actor"
        ),
        commands=PaymentCommand.objects.filter(payment_id__in=payment_ids),
        webhooks=_webhooks_of(payments),
        reports=Report.objects.filter(room=room).select_related("reporter", "about", "resolved_by"),
        disputes=Dispute.objects.filter(seat__room=room).select_related("client", "resolved_by"),
        staff_actions=_staff_actions_of(room, [seat.client_id for seat in seats]),
        ratings=Rating.objects.filter(room=room),
    )
    return story.build(_call_quality(room))


class _Builder(_Header, _RoomEntries, _MoneyEntries, _ModerationEntries):
    """Turns the loaded rows into entries; knows the people and the records' partners."""

    def build(self, quality: list[dict[str, Any]]) -> Story:
        self.meters = self._meters_from_close()
        for presence in self.presences:
            self.entries.append(self._presence(presence))
        for link in self.media_links:
            self.entries.append(self._media_link(link))
        for report in self.reports:
            self.entries.append(self._report(report))
        for dispute in self.disputes:
            self.entries.append(self._dispute(dispute))
        for seat in self.seats:
            settlement = _settlement_of(seat.payment)
            if settlement is not None:
                self.entries.append(self._settlement(settlement, seat))
        refund_actors = self._refund_deciders()
        for command in self.commands:
            self.entries.append(self._command(command, refund_actors.get(command.pk)))
        for action in self.staff_actions:
            self.entries.append(self._staff_action(action))
        for webhook in self.webhooks:
            self.entries.append(self._webhook(webhook))
        self.entries.extend(filter(None, map(self._room_event, self.room_events)))
        self.entries.extend(filter(None, map(self._payment_event, self.payment_events)))
        self.entries.sort(key=lambda entry: entry.sort_key)
        base = self.room.live_at or self.room.starts_at
        for entry in self.entries:
            entry.offset = _offset_text(entry.at - base)
        return Story(
            room=self.room,
            expert=self.expert,  # type: ignore[arg-type]
            seats=[self._seat_summary(seat) for seat in self.seats],
            entries=self.entries,
            facts=self._room_facts(),
            totals=self._totals(),
            quality=[self._quality_row(row) for row in quality],
            offset_base="the live start" if self.room.live_at else "the scheduled start",
            quality_average="median" if connection.vendor == "postgresql" else "mean",
        )

    def _meters_from_close(self) -> dict[int, dict[str, Any]]:
        """What the close measured per seat (intervals, outcome, billable seconds): the
        settlement's inputs say how the amount follows from them; these say where they came
        from."""
        meters: dict[int, dict[str, Any]] = {}
        for event in self.room_events:
            if event.kind == "closed":
                for seat in (event.data or {}).get("seats", []):
                    if isinstance(seat, dict) and isinstance(seat.get("seat"), int):
                        meters[seat["seat"]] = seat
        return meters
