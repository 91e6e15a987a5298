"""Loading a room's story: every record of the room, one query a source whatever the number
of rows (a room under dispute can have thousands of presences and stats), and everyone they
name in one more; each record's JSON parsed once (see payloads). The builders get this and
query nothing."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.db.models import Aggregate, Count, FloatField, Max, Min, Q

from accounts.models import User
from billing.models import Payment, PaymentCommand, PaymentEvent, Settlement, WebhookEvent
from moderation.models import Dispute, Report, StaffAction, StaffActionKind
from moderation.story.entries import Person, QualityRow
from moderation.story.payloads import (
    Payload,
    ProviderObject,
    payload_parse,
    provider_object_parse,
)
from rooms.models import CallStats, MediaLink, Presence, Rating, Room, RoomEvent, Seat

R = TypeVar("R")
D = TypeVar("D")


@dataclass(frozen=True)
class Row(Generic[R, D]):
    """A record and its JSON, parsed."""

    record: R
    data: D


@dataclass(frozen=True)
class Records:
    room: Room
    seats: tuple[Seat, ...]
    # Seat id → its settlement, with the settlement's inputs.
    settlements: dict[int, Row[Settlement, Payload]]
    room_events: tuple[Row[RoomEvent, Payload], ...]
    presences: tuple[Presence, ...]
    media_links: tuple[MediaLink, ...]
    payment_events: tuple[Row[PaymentEvent, Payload], ...]
    commands: tuple[PaymentCommand, ...]
    webhooks: tuple[Row[WebhookEvent, ProviderObject], ...]
    reports: tuple[Report, ...]
    disputes: tuple[Dispute, ...]
    staff_actions: tuple[Row[StaffAction, Payload], ...]
    ratings: dict[int, Rating]  # by client id
    # Its span is told when the story is built, in the viewer's zone.
    quality: tuple[QualityRow, ...]
    # Everyone a record names, by id, with their part in this room.
    people: dict[int, Person]

    @property
    def payments(self) -> dict[int, Payment]:
        return {seat.payment.pk: seat.payment for seat in self.seats if seat.payment}


def story_load(room_id: int) -> Records:
    """Room.DoesNotExist when there is no such room."""
    room = Room.objects.get(pk=room_id)
    seats = tuple(
        Seat.objects.filter(room=room)
        .select_related("payment__settlement")
        .order_by("created_at", "pk")
    )
    payments = [seat.payment for seat in seats if seat.payment is not None]
    payment_ids = [payment.pk for payment in payments]
    room_events = _parsed(RoomEvent.objects.filter(room=room))
    presences = tuple(Presence.objects.filter(room=room))
    media_links = tuple(MediaLink.objects.filter(room=room))
    payment_events = _parsed(PaymentEvent.objects.filter(payment_id__in=payment_ids))
    reports = tuple(Report.objects.filter(room=room))
    disputes = tuple(Dispute.objects.filter(seat__room=room))
    client_ids = {seat.client_id for seat in seats}
    staff_actions = _staff_actions(room, [room.expert_id, *client_ids])
    settlements = {
        seat.pk: Row(settlement, payload_parse(settlement.inputs))
        for seat in seats
        if (settlement := settlement_of(seat.payment)) is not None
    }
    # Everyone a record names, by foreign key or by id in its JSON: one query.
    ids: set[int | None] = {room.expert_id, *client_ids}
    for row in (*room_events, *payment_events, *staff_actions):
        ids |= {row.record.actor_id, *row.data.people()}
    ids |= {row.record.subject_id for row in staff_actions}
    ids |= {user for link in media_links for user in (link.client_id, link.reported_by_id)}
    ids |= {presence.user_id for presence in presences}
    ids |= {user for r in reports for user in (r.reporter_id, r.about_id, r.resolved_by_id)}
    ids |= {user for d in disputes for user in (d.client_id, d.resolved_by_id)}
    stats = _call_quality(room)
    ids |= {user for row in stats for user in (row["reporter_id"], row["peer_id"])}
    people = {
        user.pk: _person(user, room, client_ids)
        for user in User.objects.filter(pk__in=ids - {None})
    }
    return Records(
        room=room,
        seats=seats,
        settlements=settlements,
        room_events=room_events,
        presences=presences,
        media_links=media_links,
        payment_events=payment_events,
        commands=tuple(PaymentCommand.objects.filter(payment_id__in=payment_ids)),
        webhooks=tuple(
            Row(webhook, provider_object_parse(webhook.payload)) for webhook in _webhooks(payments)
        ),
        reports=reports,
        disputes=disputes,
        staff_actions=staff_actions,
        ratings={rating.client_id: rating for rating in Rating.objects.filter(room=room)},
        quality=tuple(
            QualityRow(
                people[row["reporter_id"]],
                people[row["peer_id"]],
                row["samples"],
                row["rtt"],
                row["loss"],
                row["first_at"],
                row["last_at"],
            )
            for row in stats
        ),
        people=people,
    )


def settlement_of(payment: Payment | None) -> Settlement | None:
    if payment is None:
        return None
    try:
        return payment.settlement
    except Settlement.DoesNotExist:
        return None


_Event = TypeVar("_Event", RoomEvent, PaymentEvent, StaffAction)


def _parsed(rows: Iterable[_Event]) -> tuple[Row[_Event, Payload], ...]:
    return tuple(Row(row, payload_parse(row.data)) for row in rows)


def _person(user: User, room: Room, client_ids: set[int]) -> Person:
    if user.pk == room.expert_id:
        role = "expert"
    elif user.pk in client_ids:
        role = "client"
    else:
        role = "staff" if user.is_staff else ""
    return Person(user.pk, user.display_name, user.email, role)


def _staff_actions(room: Room, people: list[int]) -> tuple[Row[StaffAction, Payload], ...]:
    """Actions on the room, and bans of its people that took them out of it or canceled it (a
    ban names its rooms in `data`, not by foreign key: it may span several)."""
    actions = _parsed(
        StaffAction.objects.filter(
            Q(room=room)
            | Q(room__isnull=True, kind=StaffActionKind.USER_BAN, subject_id__in=people)
        ).select_related("actor", "subject")
    )
    return tuple(
        row for row in actions if row.record.room_id == room.pk or room.pk in row.data.rooms
    )


def _webhooks(payments: list[Payment]) -> Iterable[WebhookEvent]:
    """The provider's events about these payments, in one query: webhook events have no
    foreign key, only the provider's ids inside the payload (Stripe's event JSON)."""
    ids = sorted(
        {
            value
            for payment in payments
            for value in (payment.intent_id, payment.setup_id, payment.charge_id)
            if value
        }
    )
    if not ids:
        return []
    return WebhookEvent.objects.filter(
        Q(payload__data__object__id__in=ids) | Q(payload__data__object__payment_intent__in=ids),
        provider__in={payment.provider for payment in payments},
        # Nothing about a payment arrives before it exists; bounds the scan of the inbox.
        received_at__gte=min(payment.created_at for payment in payments),
    )


class Median(Aggregate):
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
        .values("reporter_id", "peer_id")
        .annotate(
            samples=Count("pk"),
            rtt=Median("rtt_ms"),
            loss=Median("packet_loss"),
            first_at=Min("created_at"),
            last_at=Max("created_at"),
        )
        .order_by("reporter_id", "peer_id")
    )
