"""What every kind of entry needs: the room's people, the loaded records and which of them
have a partner that tells the same fact, and the words for the records' values."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from accounts.models import User
from billing.models import PaymentCommand, PaymentEvent, WebhookEvent
from billing.pricing import format_money
from moderation.models import Dispute, Report, StaffAction, StaffActionKind
from moderation.story.records import Entry, Fact, Link, Person
from moderation.story.words import (
    _is_interval_list,
    _key_order,
    _label,
    clock_text,
    duration_text,
    moment_text,
)
from rooms.models import MediaLink, Presence, Rating, Room, RoomEvent, Seat


class _BuilderBase:
    """The builder's common part; the entries of each source are made by the classes in
    rooms, money and moderation, and builder._Builder puts them together."""

    # What the close measured per seat: set by build() before any entry is made.
    meters: dict[int, dict[str, Any]]

    def __init__(self, room: Room, seats: list[Seat]) -> None:
        self.room = room
        self.seats = seats
        self.client_ids = {seat.client_id for seat in seats}
        self.people: dict[int, Person] = {}
        self.expert = self.person(room.expert)
        self.payments = {seat.payment.pk: seat.payment for seat in seats if seat.payment}
        self.seat_of_payment = {seat.payment_id: seat for seat in seats if seat.payment_id}
        self.entries: list[Entry] = []
        for seat in seats:
            self.person(seat.client)

    # People --------------------------------------------------------------------------------

    def person(self, user: User | None) -> Person | None:
        if user is None:
            return None
        if user.pk not in self.people:
            if user.pk == self.room.expert_id:
                role = "expert"
            elif user.pk in self.client_ids:
                role = "client"
            else:
                role = "staff" if user.is_staff else ""
            self.people[user.pk] = Person(user.pk, user.display_name, user.email, role)
        return self.people[user.pk]

    def name_of(self, user_id: Any, *, email: bool = True) -> str:
        known = self.people.get(user_id) if isinstance(user_id, int) else None
        if known is None:
            return f"user #{user_id}"
        return f"{known.name} <{known.email}>" if email else known.name

    # Values --------------------------------------------------------------------------------

    def money(self, amount_minor: int | None, currency: str | None = None) -> str:
        if amount_minor is None:
            return "—"
        return format_money(amount_minor, currency or self.room.currency)

    def intervals(self, pairs: list[list[float]]) -> tuple[str, ...]:
        if not pairs:
            return ("none",)
        day = self.room.starts_at
        return tuple(
            f"{clock_text(datetime.fromtimestamp(start, UTC), day)} → "
            f"{clock_text(datetime.fromtimestamp(end, UTC), day)} "
            f"({duration_text(end - start)})"
            for start, end in pairs
        )

    def value(self, key: str, value: Any) -> str:
        """One JSON value, in words: money in its currency, seconds as durations, people by
        name, times in UTC."""
        if value is None or value == "":
            return "—"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if key.endswith("_minor") and isinstance(value, int):
            return self.money(value)
        if key.endswith("seconds") and isinstance(value, int | float):
            return f"{value:g} s ({duration_text(float(value))})"
        if key.endswith("_percent") and isinstance(value, int | float):
            return f"{value} %"
        if key in ("user", "client", "expert", "blocked", "subject"):
            return self.name_of(value)
        if key in ("seat", "dispute", "report", "command") and isinstance(value, int):
            return f"{key} #{value}"
        if isinstance(value, str) and key.endswith("_at"):
            with contextlib.suppress(ValueError):
                return moment_text(datetime.fromisoformat(value))
        if isinstance(value, dict):
            return "; ".join(f"{_label(k)}: {self.value(k, v)}" for k, v in value.items())
        if isinstance(value, list):
            return ", ".join(self.value(key, item) for item in value) or "none"
        return str(value)

    def data_facts(self, data: dict[str, Any] | None, skip: Iterable[str] = ()) -> list[Fact]:
        facts = []
        # PostgreSQL keeps JSON keys in its own order; people read the decisive ones first.
        for key, value in sorted((data or {}).items(), key=lambda item: _key_order(item[0])):
            if key in skip or value is None or value == "":
                continue
            if _is_interval_list(value):
                facts.append(Fact(_label(key), lines=self.intervals(value)))
            else:
                facts.append(Fact(_label(key), self.value(key, value)))
        return facts

    def payment_link(self, payment_id: int) -> Link:
        seat = self.seat_of_payment.get(payment_id)
        owner = f" ({self.name_of(seat.client_id, email=False)})" if seat else ""
        return Link("billing_payment", payment_id, f"Payment #{payment_id}{owner}")

    # Loading -------------------------------------------------------------------------------

    def load(
        self,
        *,
        room_events: Iterable[RoomEvent],
        presences: Iterable[Presence],
        media_links: Iterable[MediaLink],
        payment_events: Iterable[PaymentEvent],
        commands: Iterable[PaymentCommand],
        webhooks: Iterable[WebhookEvent],
        reports: Iterable[Report],
        disputes: Iterable[Dispute],
        staff_actions: list[StaffAction],
        ratings: Iterable[Rating],
    ) -> None:
        self.room_events = list(room_events)
        self.presences = list(presences)
        self.media_links = list(media_links)
        self.payment_events = list(payment_events)
        self.commands = list(commands)
        self.webhooks = list(webhooks)
        self.reports = list(reports)
        self.disputes = list(disputes)
        self.staff_actions = staff_actions
        self.ratings = {rating.client_id: rating for rating in ratings}
        for user in self._users():
            self.person(user)
        self._people_named_in_data()
        # Which records have a partner that tells the same fact (see the package's docstring).
        self.opened_events = {
            (event.data or {}).get("connection"): event
            for event in self.room_events
            if event.kind == "presence_opened"
        }
        self.connections = {presence.connection_id for presence in self.presences}
        self.report_ids = {report.pk for report in self.reports}
        self.dispute_ids = {dispute.pk for dispute in self.disputes}
        self.chargeback_ids = {d.provider_dispute_id for d in self.disputes} - {""}
        self.room_event_kinds = {event.kind for event in self.room_events}
        self.command_ids = {command.pk for command in self.commands}
        self.command_kinds = {(command.payment_id, command.kind) for command in self.commands}
        self.disputes_decided_by_staff = {
            action.dispute_id
            for action in self.staff_actions
            if action.kind == StaffActionKind.DISPUTE_RESOLVE
        }
        self.removed_by_staff = {
            action.subject_id
            for action in self.staff_actions
            if action.kind == StaffActionKind.PARTICIPANT_REMOVE
        }

    def _people_named_in_data(self) -> None:
        """People a room event names by id only (who was removed, blocked): at most one
        query, for those not met in any row already."""
        named: set[Any] = {
            value
            for event in self.room_events
            for key, value in (event.data or {}).items()
            if key in ("user", "client", "expert", "blocked") and isinstance(value, int)
        }
        named |= {
            seat.get("client")
            for event in self.room_events
            if event.kind == "closed"
            for seat in (event.data or {}).get("seats") or []
            if isinstance(seat, dict) and isinstance(seat.get("client"), int)
        }
        missing = named - self.people.keys()
        if missing:
            for user in User.objects.filter(pk__in=missing):
                self.person(user)

    def _users(self) -> Iterator[User | None]:
        for event in self.room_events:
            yield event.actor
        for presence in self.presences:
            yield presence.user
        for link in self.media_links:
            yield link.client
            yield link.reported_by
        for payment_event in self.payment_events:
            yield payment_event.actor
        for report in self.reports:
            yield from (report.reporter, report.about, report.resolved_by)
        for dispute in self.disputes:
            yield from (dispute.client, dispute.resolved_by)
        for action in self.staff_actions:
            yield from (action.actor, action.subject)
