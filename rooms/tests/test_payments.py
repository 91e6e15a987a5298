"""Bookings and money: a seat is confirmed by its hold; cancellations, expiry and the expert's
cancel move the money through billing's services."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import time_machine

from accounts.models import OutboundEmail
from accounts.tests.factories import UserFactory
from billing import services as billing
from billing.errors import BillingError
from billing.gateways.local import TEST_CARD, LocalGateway
from billing.models import (
    CommandKind,
    CommandState,
    LocalIntent,
    Payment,
    PaymentCommand,
    PaymentState,
)
from billing.tests.helpers import commands_run_pending
from rooms import services
from rooms.errors import InvalidTransition
from rooms.models import Offering, Room, RoomEvent, RoomState, Seat, SeatState
from rooms.tests.factories import (
    NOW,
    OfferingFactory,
    expert_create,
    seat_pay,
    weekdays_available,
)
from rooms.tests.races import queued_in_order

UTC = dt.UTC
SLOT = dt.datetime(2026, 12, 3, 10, 0, tzinfo=UTC)  # 50 h after NOW
FAR = dt.datetime(2026, 12, 15, 10, 0, tzinfo=UTC)  # two weeks out: the card is saved first


def _payment(seat: Seat) -> Payment:
    assert seat.payment_id is not None
    return Payment.objects.get(pk=seat.payment_id)


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_now")
class TestBookingPayments:
    def test_a_booking_waits_for_a_hold_of_the_seats_maximum(self, offering: Offering) -> None:
        client = UserFactory.create()
        seat = services.booking_reserve(client, offering, SLOT)
        payment = _payment(seat)
        assert (payment.payer, payment.payee) == (client, offering.expert)
        assert (payment.amount_minor, payment.currency) == (12000, "EUR")
        assert (payment.state, payment.hold_at) == (PaymentState.PENDING, None)
        assert "Architecture review" in payment.description

    def test_paying_confirms_the_seat_and_sends_the_confirmation(
        self, offering: Offering, django_capture_on_commit_callbacks: Callable[..., Any]
    ) -> None:
        seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
        with django_capture_on_commit_callbacks(execute=False):
            seat = seat_pay(seat)
        assert seat.state == SeatState.CONFIRMED
        assert _payment(seat).state == PaymentState.AUTHORIZED
        assert OutboundEmail.objects.filter(to=seat.client.email).count() == 1

    def test_a_declined_card_leaves_the_reservation_waiting(self, offering: Offering) -> None:
        seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
        with pytest.raises(BillingError, match="declined"):
            seat_pay(seat, card_number="4000000000000002")
        seat.refresh_from_db()
        assert seat.state == SeatState.RESERVED

    def test_canceling_in_time_releases_the_hold(self, offering: Offering) -> None:
        seat = seat_pay(services.booking_reserve(UserFactory.create(), offering, SLOT))
        services.seat_cancel(seat.pk, actor=seat.client, expected_fee_minor=0)
        command = PaymentCommand.objects.get()
        assert (command.kind, command.amount_minor) == (CommandKind.CANCEL, 0)
        assert commands_run_pending() == [CommandState.SUCCEEDED]
        payment = _payment(seat)
        assert (payment.state, payment.captured_minor, payment.released_minor) == (
            PaymentState.CANCELED,
            0,
            12000,
        )
        assert payment.settlement.rule == "released"

    def test_canceling_late_captures_the_late_fee_and_releases_the_rest(
        self, offering: Offering
    ) -> None:
        seat = seat_pay(services.booking_reserve(UserFactory.create(), offering, SLOT))
        with time_machine.travel(SLOT - dt.timedelta(hours=3), tick=False):
            services.seat_cancel(seat.pk, actor=seat.client, expected_fee_minor=6000)
        payment = _payment(seat)
        settlement = payment.settlement
        assert (settlement.rule, settlement.amount_minor) == ("late_cancel", 6000)
        assert settlement.inputs["late_cancel_fee_percent"] == 50
        assert "Canceled 3 h 0 min before the start" in settlement.explanation
        assert commands_run_pending() == [CommandState.SUCCEEDED]
        payment.refresh_from_db()
        assert (payment.state, payment.captured_minor, payment.released_minor) == (
            PaymentState.CAPTURED,
            6000,
            6000,
        )

    def test_the_expert_canceling_releases_every_seat_in_full(self) -> None:
        expert = expert_create(time_zone="UTC")
        group = OfferingFactory.create(expert=expert, capacity=3)
        room = services.group_room_publish(expert, group, SLOT)
        paid = seat_pay(services.group_seat_reserve(UserFactory.create(), room.pk))
        unpaid = services.group_seat_reserve(UserFactory.create(), room.pk)
        with time_machine.travel(SLOT - dt.timedelta(hours=1), tick=False):
            services.room_cancel_by_expert(room.pk, actor=expert)
        commands_run_pending()
        assert _payment(paid).state == PaymentState.CANCELED
        assert _payment(paid).released_minor == 12000
        # The unpaid seat's payment never reached the provider's hold: it simply ends.
        assert _payment(unpaid).state == PaymentState.CANCELED
        assert all(p.settlement.amount_minor == 0 for p in Payment.objects.all())

    def test_an_expired_reservation_ends_its_payment(self, offering: Offering) -> None:
        seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
        billing.payment_checkout(_payment(seat).pk)  # the pay page was opened, never used
        with time_machine.travel(NOW + dt.timedelta(minutes=11), tick=False):
            assert services.reservations_expire() == 1
        commands_run_pending()
        payment = _payment(seat)
        assert payment.state == PaymentState.CANCELED
        assert LocalIntent.objects.get(pk=payment.intent_id).status == "canceled"

    def test_a_hold_authorized_after_the_reservation_expired_is_given_back(
        self, offering: Offering
    ) -> None:
        seat = services.booking_reserve(UserFactory.create(), offering, SLOT)
        with time_machine.travel(NOW + dt.timedelta(minutes=11), tick=False):
            payment = billing.payment_local_card(_payment(seat).pk, card_number=TEST_CARD)
            seat.refresh_from_db()
            assert seat.state == SeatState.RESERVED  # past its time: the sweep expires it
            assert services.reservations_expire() == 1
        seat.refresh_from_db()
        assert seat.state == SeatState.EXPIRED
        assert payment.settlement.amount_minor == 0
        assert "could not be confirmed" in payment.settlement.inputs["reason"]
        commands_run_pending()
        payment.refresh_from_db()
        assert payment.state == PaymentState.CANCELED

    def test_a_moved_booking_keeps_its_payment(self, offering: Offering) -> None:
        seat = seat_pay(services.booking_reserve(UserFactory.create(), offering, SLOT))
        services.seat_reschedule(seat.pk, actor=seat.client, new_start=SLOT + dt.timedelta(days=1))
        seat.refresh_from_db()
        assert _payment(seat).state == PaymentState.AUTHORIZED
        assert not PaymentCommand.objects.exists()

    def test_a_paid_booking_cannot_move_past_what_its_card_hold_covers(
        self, offering: Offering
    ) -> None:
        seat = seat_pay(services.booking_reserve(UserFactory.create(), offering, SLOT))
        with pytest.raises(InvalidTransition, match="card hold cannot stretch that far"):
            services.seat_reschedule(
                seat.pk, actor=seat.client, new_start=SLOT + dt.timedelta(days=6)
            )


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_now")
class TestHoldsPlacedLater:
    def test_a_session_two_weeks_out_saves_the_card_and_holds_a_day_before(
        self, offering: Offering, django_capture_on_commit_callbacks: Callable[..., Any]
    ) -> None:
        seat = services.booking_reserve(UserFactory.create(), offering, FAR)
        assert _payment(seat).hold_at == FAR - dt.timedelta(hours=24)
        seat = seat_pay(seat)
        # The card is saved; the seat stays reserved until shortly before the start.
        assert seat.state == SeatState.RESERVED
        assert seat.reserved_until == FAR - dt.timedelta(hours=2)
        assert RoomEvent.objects.filter(room=seat.room, kind="card_saved").count() == 1
        assert services.reservations_expire() == 0
        with (
            time_machine.travel(FAR - dt.timedelta(hours=23), tick=False),
            django_capture_on_commit_callbacks(execute=False),
        ):
            assert billing.holds_due_ids() == [seat.payment_id]
            billing.payment_hold_place(_payment(seat).pk)
        seat.refresh_from_db()
        assert seat.state == SeatState.CONFIRMED
        assert _payment(seat).state == PaymentState.AUTHORIZED

    def test_a_saved_card_still_unpaid_two_hours_before_releases_the_seat(
        self, offering: Offering
    ) -> None:
        seat = seat_pay(services.booking_reserve(UserFactory.create(), offering, FAR))
        Payment.objects.filter(pk=_payment(seat).pk).update(payment_method_id="lpm_decline_0002")
        with time_machine.travel(FAR - dt.timedelta(hours=23), tick=False):
            billing.payment_hold_place(_payment(seat).pk)
        assert OutboundEmail.objects.filter(subject__startswith="Action needed").count() == 1
        seat.refresh_from_db()
        assert seat.state == SeatState.RESERVED
        with time_machine.travel(FAR - dt.timedelta(hours=2), tick=False):
            assert services.reservations_expire() == 1
        seat.refresh_from_db()
        assert seat.state == SeatState.EXPIRED
        assert Room.objects.get(pk=seat.room_id).state == RoomState.CANCELED
        assert _payment(seat).state == PaymentState.CANCELED


@pytest.mark.django_db(transaction=True)
def test_paying_while_the_client_cancels_never_deadlocks_and_ends_consistent() -> None:
    """The provider's answer enters through the payment, the client's cancel through the room:
    both take the payment's lock first, so they queue instead of deadlocking."""
    expert = expert_create(time_zone="UTC")
    offering = OfferingFactory.create(expert=expert, notice_minutes=0)
    weekdays_available(expert, start=dt.time(0), end=dt.time(23))
    today = dt.datetime.now(UTC).date()
    start = dt.datetime.combine(today + dt.timedelta(days=3), dt.time(3), tzinfo=UTC)
    for round_ in range(6):
        client = UserFactory.create()
        seat = services.booking_reserve(client, offering, start + dt.timedelta(hours=round_))
        assert seat.payment_id is not None
        payment_id, seat_id = seat.payment_id, seat.pk
        billing.payment_checkout(payment_id)
        pay = partial(billing.payment_local_card, payment_id, card_number=TEST_CARD)
        cancel = partial(services.seat_cancel, seat_id, actor=client)
        # Both queue on the payment together; PostgreSQL lets them in in the order they came:
        # the card first in even rounds, the cancel first in odd ones.
        actions: list[Callable[[], object]] = [pay, cancel] if round_ % 2 == 0 else [cancel, pay]
        outcomes = queued_in_order(
            partial(Payment.objects.select_for_update().get, pk=payment_id), actions
        )
        assert outcomes.overlapped()
        assert outcomes == ["ok", "ok"]
        story = list(RoomEvent.objects.filter(room_id=seat.room_id).values_list("kind", flat=True))
        if round_ % 2 == 0:  # paid, then canceled in time: confirmed, then released
            assert story == ["booked", "seat_confirmed", "seat_canceled", "state_changed"]
        else:  # canceled unpaid; the authorization that came after is canceled at the provider
            assert story == ["booked", "seat_canceled", "state_changed"]
        seat.refresh_from_db()
        payment = _payment(seat)
        # However the race went, a canceled seat never keeps a hold.
        assert seat.state == SeatState.CANCELED
        # One cancel at the provider, nothing captured, in either order.
        assert list(
            PaymentCommand.objects.filter(payment_id=payment_id).values_list("kind", "amount_minor")
        ) == [(CommandKind.CANCEL, 0)]
        commands_run_pending()
        payment.refresh_from_db()
        assert payment.state == PaymentState.CANCELED, (round_, outcomes)


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_now")
def test_a_late_cancel_whose_hold_lapsed_at_the_provider_still_cancels(offering: Offering) -> None:
    seat = seat_pay(services.booking_reserve(UserFactory.create(), offering, SLOT))
    payment = _payment(seat)
    lapsed = LocalGateway().intent_cancel(payment.intent_id, idempotency_key="lapsed")
    billing.payment_apply_intent(payment.pk, lapsed, source="webhook")
    with time_machine.travel(SLOT - dt.timedelta(hours=3), tick=False):
        services.seat_cancel(seat.pk, actor=seat.client, expected_fee_minor=6000)
    seat.refresh_from_db()
    assert seat.state == SeatState.CANCELED
    assert _payment(seat).settlement.rule == "released"
