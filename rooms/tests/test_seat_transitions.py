"""A seat's state has one writer, `seat_transition`: the expiry of unpaid reservations goes
through it too, with its extra condition (still past its time) as a narrowed guard."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from django.db import transaction
from django.db.models import Q

from accounts.tests.factories import UserFactory
from billing import services as billing
from rooms import services
from rooms.errors import InvalidTransition
from rooms.models import Offering, RoomEvent, Seat, SeatState
from rooms.services import booking, records
from rooms.tests.factories import NOW

pytestmark = pytest.mark.django_db

SLOT = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=11)


@pytest.fixture(autouse=True)
def _frozen_now() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


def _reserved(offering: Offering) -> Seat:
    return services.booking_reserve(UserFactory.create(), offering, SLOT)


def test_a_narrowed_transition_leaves_a_seat_its_condition_no_longer_matches(
    offering: Offering,
) -> None:
    seat = _reserved(offering)  # held until NOW + 10 min
    with pytest.raises(InvalidTransition, match="changed meanwhile"):
        records.seat_transition(seat, SeatState.EXPIRED, where=Q(reserved_until__lte=NOW))
    assert Seat.objects.get(pk=seat.pk).state == SeatState.RESERVED

    records.seat_transition(seat, SeatState.EXPIRED, where=Q(reserved_until__gt=NOW))
    assert (seat.state, Seat.objects.get(pk=seat.pk).state) == (SeatState.EXPIRED,) * 2


def test_a_transition_the_table_does_not_allow_is_refused_whatever_the_condition(
    offering: Offering,
) -> None:
    seat = _reserved(offering)
    records.seat_transition(seat, SeatState.EXPIRED)
    with pytest.raises(InvalidTransition, match="already reservation expired"):
        records.seat_transition(seat, SeatState.CONFIRMED, where=Q())


def test_the_expiry_sweep_changes_seats_only_through_seat_transition(
    offering: Offering, monkeypatch: pytest.MonkeyPatch
) -> None:
    seat = _reserved(offering)
    made: list[tuple[int, str]] = []

    def recorded(seat: Seat, target: str, **kwargs: Any) -> None:
        made.append((seat.pk, target))
        records.seat_transition(seat, target, **kwargs)

    monkeypatch.setattr(booking, "seat_transition", recorded)
    with time_machine.travel(LATER, tick=False):
        assert services.reservations_expire() == 1
    assert made == [(seat.pk, SeatState.EXPIRED)]
    assert Seat.objects.get(pk=seat.pk).state == SeatState.EXPIRED
    assert RoomEvent.objects.filter(room=seat.room, kind="reservation_expired").count() == 1


def test_a_reservation_paid_after_the_sweep_read_it_is_not_expired(
    offering: Offering, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep reads the stale seats, then locks and expires each: a payment that lands in
    between wins, and the sweep leaves the seat (and its room) alone."""
    seat = _reserved(offering)
    real_lock = billing.payments_lock

    def paid_meanwhile(payment_ids: list[int]) -> None:
        Seat.objects.filter(pk=seat.pk).update(state=SeatState.CONFIRMED, confirmed_at=LATER)
        real_lock(payment_ids)

    monkeypatch.setattr(billing, "payments_lock", paid_meanwhile)
    with time_machine.travel(LATER, tick=False), transaction.atomic():
        assert booking._seats_expire_stale(Seat.objects.filter(pk=seat.pk), LATER) == 0
    assert Seat.objects.get(pk=seat.pk).state == SeatState.CONFIRMED
    assert not RoomEvent.objects.filter(room=seat.room, kind="reservation_expired").exists()
