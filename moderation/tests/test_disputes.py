"""A client's dispute of what a seat cost, at the service level with the local provider: the
72-hour window, who may dispute what, staff's three outcomes, and every refusal writing nothing.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from pytest_django import Settings

from accounts.models import OutboundEmail, User
from accounts.tests.factories import StaffFactory, UserFactory
from billing import services as billing
from billing.models import (
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
)
from moderation import services
from moderation.models import Dispute, DisputeState, StaffAction, StaffActionKind
from moderation.services import ModerationError, Outcome
from moderation.tests.helpers import payment_of, payout_held, records, seat_charged, settlement_of
from rooms import services as rooms
from rooms.models import Room, RoomEvent, Seat
from rooms.tests.factories import CALL_START, NOW, seat_booked
from rooms.tests.races import race

# The call of `room_closed_after_a_call` ends (and is settled) three minutes after its start;
# the client may dispute it for 72 hours after that.
SETTLED_AT = CALL_START + dt.timedelta(minutes=3)
DEADLINE = SETTLED_AT + dt.timedelta(hours=72)
CHARGED = 12000  # the offering's fixed price, 120.00 EUR


@pytest.fixture(autouse=True)
def _an_hour_after_the_call(settings: Settings) -> Iterator[None]:
    settings.PAYMENT_PROVIDER = "local"
    settings.DISPUTE_WINDOW_HOURS = 72
    settings.PLATFORM_FEE_PERCENT = 15
    with time_machine.travel(CALL_START + dt.timedelta(hours=1), tick=False):
        yield


def _open(seat: Seat, client: User | None = None) -> Dispute:
    return services.dispute_open(
        seat.pk,
        client or seat.client,
        reason="quality",
        text="The picture froze for most of the call.",
    )


def _resolve(dispute: Dispute, outcome: str, **kwargs: Any) -> Dispute:
    kwargs.setdefault("actor", StaffFactory.create())
    kwargs.setdefault("note", "The recording shows the call dropped twice.")
    return services.dispute_resolve(dispute.pk, outcome=outcome, **kwargs)


@pytest.fixture
def seat(db: None) -> Seat:
    return seat_charged()


# --- Opening: the window, the seat, the charge -------------------------------------------------


@pytest.mark.django_db
def test_a_dispute_at_the_last_moment_of_the_72_hours_opens_and_holds_the_payout(
    seat: Seat,
) -> None:
    assert settlement_of(seat).created_at == SETTLED_AT
    assert not payout_held(seat)

    with time_machine.travel(DEADLINE, tick=False):
        dispute = _open(seat)

    assert (dispute.state, dispute.source, dispute.client_id) == ("open", "client", seat.client_id)
    assert (dispute.charged_minor, dispute.currency, dispute.created_at) == (
        CHARGED,
        "EUR",
        DEADLINE,
    )
    assert payout_held(seat)
    event = RoomEvent.objects.get(room_id=seat.room_id, kind="disputed")
    assert (event.actor_id, event.data) == (
        seat.client_id,
        {"dispute": dispute.pk, "seat": seat.pk, "reason": "quality"},
    )
    assert payment_of(seat).events.filter(kind="payout_held").count() == 1


@pytest.mark.django_db
def test_a_dispute_after_72_hours_is_refused(seat: Seat) -> None:
    before = records(seat)

    with (
        time_machine.travel(DEADLINE + dt.timedelta(seconds=1), tick=False),
        pytest.raises(ModerationError) as refused,
    ):
        _open(seat)

    assert "72 hours after the session" in str(refused.value)
    assert "ended on 2026-12-04 14:03 UTC" in str(refused.value)
    assert records(seat) == before


@pytest.mark.django_db
def test_the_window_never_outlasts_the_payout(seat: Seat, settings: Settings) -> None:
    """A longer dispute window than payout delay (a misconfiguration) must not let a dispute
    arrive after the money left for the expert."""
    settings.DISPUTE_WINDOW_HOURS = 200
    payout_due = settlement_of(seat).payout_due_at
    assert services.dispute_deadline(settlement_of(seat)) == payout_due
    with (
        time_machine.travel(payout_due + dt.timedelta(seconds=1), tick=False),
        pytest.raises(ModerationError, match="the time for this one ended"),
    ):
        _open(seat)


@pytest.mark.django_db
def test_a_client_cannot_dispute_another_clients_seat(seat: Seat) -> None:
    before = records(seat)

    with pytest.raises(ModerationError, match="only dispute your own paid bookings"):
        _open(seat, client=UserFactory.create())
    with pytest.raises(ModerationError, match="only dispute your own paid bookings"):
        _open(seat, client=Room.objects.get(pk=seat.room_id).expert)

    assert records(seat) == before


@pytest.mark.django_db
def test_a_session_that_cost_nothing_cannot_be_disputed() -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(NOW, tick=False):
        rooms.room_cancel_by_expert(room.pk, actor=room.expert)
    assert settlement_of(seat).amount_minor == 0
    before = records(seat)

    with pytest.raises(ModerationError, match="Nothing was charged for this session"):
        _open(seat)

    assert records(seat) == before


@pytest.mark.django_db
def test_a_client_disputes_a_charge_only_once(seat: Seat) -> None:
    _open(seat)
    before = records(seat)

    with pytest.raises(ModerationError, match="already disputed this charge"):
        _open(seat)

    assert records(seat) == before
    assert Dispute.objects.count() == 1


@pytest.mark.django_db
def test_a_dispute_without_a_reason_or_a_text_is_refused(seat: Seat) -> None:
    before = records(seat)

    for reason, text in [("chargeback", "My bank said so."), ("quality", "   "), ("", "x")]:
        with pytest.raises(ModerationError):
            services.dispute_open(seat.pk, seat.client, reason=reason, text=text)

    assert records(seat) == before


# --- Staff's outcomes ----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_full_refund_refunds_exactly_what_is_still_refundable(seat: Seat) -> None:
    staff = StaffFactory.create()
    goodwill = billing.payment_refund(
        payment_of(seat).pk, amount_minor=2000, currency="EUR", reason="late start", actor=staff
    )
    assert billing.command_execute(goodwill.pk) == CommandState.SUCCEEDED
    dispute = _open(seat)

    dispute = _resolve(dispute, Outcome.REFUND_FULL, actor=staff)

    assert (dispute.state, dispute.refund_minor) == (DisputeState.REFUNDED, CHARGED - 2000)
    refund = PaymentCommand.objects.exclude(pk=goodwill.pk).get(kind=CommandKind.REFUND)
    assert refund.amount_minor == CHARGED - 2000
    payment = payment_of(seat)
    assert (payment.refunded_minor, payment.refundable_minor) == (CHARGED, 0)
    assert billing.command_execute(refund.pk) == CommandState.SUCCEEDED
    assert not payout_held(seat)


@pytest.mark.django_db
def test_a_partial_refund_of_everything_left_is_recorded_as_a_full_refund(seat: Seat) -> None:
    dispute = _resolve(_open(seat), Outcome.REFUND_PARTIAL, refund_minor=CHARGED)

    assert (dispute.state, dispute.refund_minor) == (DisputeState.REFUNDED, CHARGED)
    assert dispute.refund_command == PaymentCommand.objects.get(kind=CommandKind.REFUND)


@pytest.mark.django_db
def test_a_rejection_refunds_nothing_keeps_the_note_and_lets_the_payout_go(seat: Seat) -> None:
    dispute = _open(seat)
    staff = StaffFactory.create()

    dispute = _resolve(
        dispute, Outcome.REJECT, actor=staff, note="  The call ran its full length.  "
    )

    dispute.refresh_from_db()
    assert (dispute.state, dispute.refund_minor, dispute.resolution_note) == (
        DisputeState.REJECTED,
        0,
        "The call ran its full length.",
    )
    assert (dispute.resolved_by, dispute.resolved_at) == (
        staff,
        CALL_START + dt.timedelta(hours=1),
    )
    assert not PaymentCommand.objects.filter(kind=CommandKind.REFUND).exists()
    assert payment_of(seat).refunded_minor == 0
    assert not payout_held(seat)
    action = StaffAction.objects.get()
    assert (action.actor, action.kind, action.dispute_id, action.subject_id) == (
        staff,
        StaffActionKind.DISPUTE_RESOLVE,
        dispute.pk,
        seat.client_id,
    )
    assert action.data == {"outcome": "reject", "refund_minor": 0, "currency": "EUR"}
    email = OutboundEmail.objects.get(key=f"dispute-decided:{dispute.pk}")
    assert email.to == seat.client.email


# --- Refusals: a clear message, nothing written ----------------------------------------------


@pytest.mark.django_db
def test_a_refund_over_what_is_refundable_is_refused_with_the_amounts_and_writes_nothing(
    seat: Seat,
) -> None:
    goodwill = billing.payment_refund(
        payment_of(seat).pk, amount_minor=2000, currency="EUR", reason="late start", actor=None
    )
    billing.command_execute(goodwill.pk)
    dispute = _open(seat)
    before = records(seat)

    with pytest.raises(ModerationError) as refused:
        _resolve(dispute, Outcome.REFUND_PARTIAL, refund_minor=CHARGED - 2000 + 1)

    assert str(refused.value) == (
        "At most 100.00 EUR can be refunded (charged 120.00 EUR, already refunded 20.00 EUR)."
    )
    assert records(seat) == before
    assert Dispute.objects.get().state == DisputeState.OPEN
    assert payout_held(seat)


@pytest.mark.django_db
def test_a_partial_refund_of_nothing_or_an_unknown_outcome_is_refused(seat: Seat) -> None:
    dispute = _open(seat)
    before = records(seat)

    for outcome, amount in [
        (Outcome.REFUND_PARTIAL, None),
        (Outcome.REFUND_PARTIAL, 0),
        (Outcome.REFUND_PARTIAL, -500),
        ("refund_double", 500),
    ]:
        with pytest.raises(ModerationError):
            _resolve(dispute, outcome, refund_minor=amount)

    assert records(seat) == before


@pytest.mark.django_db
def test_resolving_a_resolved_dispute_is_refused_and_writes_nothing(seat: Seat) -> None:
    dispute = _open(seat)
    _resolve(dispute, Outcome.REJECT)
    before = records(seat)

    with pytest.raises(ModerationError, match=r"already decided \(rejected, 2026-12-01 15:00 UTC"):
        _resolve(dispute, Outcome.REFUND_FULL)

    assert records(seat) == before


@pytest.mark.django_db
def test_only_active_staff_decide_a_dispute_and_only_with_a_note(seat: Seat) -> None:
    dispute = _open(seat)
    before = records(seat)
    expert = Room.objects.get(pk=seat.room_id).expert

    for actor in [seat.client, expert, StaffFactory.create(is_active=False)]:
        with pytest.raises(ModerationError, match="Only Parley staff"):
            _resolve(dispute, Outcome.REFUND_FULL, actor=actor)
    with pytest.raises(ModerationError, match="Give a reason"):
        _resolve(dispute, Outcome.REFUND_FULL, note="  \n ")

    assert records(seat) == before


# --- Two staff at once -----------------------------------------------------------------------


def _hold_payment_until_waited_on(payment_id: int, waiters: int) -> Callable[[], bool]:
    """Lock the payment from a thread of its own until `waiters` transactions of this database
    wait on a lock, then let go: the racers are then inside the service together, instead of
    one finishing before a busy machine schedules the other. Returns "were they all seen?"."""
    locked, seen = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic():
                billing.payments_lock([payment_id])
                locked.set()
                for _ in range(2000):  # 20 s at most (the clock is frozen by time-machine)
                    with connection.cursor() as cursor:
                        # Statistics are read once per transaction unless cleared.
                        cursor.execute("SELECT pg_stat_clear_snapshot()")
                        cursor.execute(
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                        )
                        if cursor.fetchone()[0] >= waiters:
                            seen.set()
                            break
                    time.sleep(0.01)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(20)

    def finished() -> bool:
        holder.join(timeout=30)
        return seen.is_set()

    return finished


@pytest.mark.django_db(transaction=True)
def test_two_staff_resolving_one_dispute_at_once_refund_once() -> None:
    dispute = _open(seat_charged())

    def resolve(amount: int) -> Callable[[], object]:
        staff = StaffFactory.create()
        return lambda: _resolve(dispute, Outcome.REFUND_PARTIAL, actor=staff, refund_minor=amount)

    held = _hold_payment_until_waited_on(dispute.payment_id, waiters=2)
    outcomes = race([resolve(3000), resolve(5000)])

    assert held(), "the two staff never waited on the payment together"
    assert outcomes.overlapped()
    # One decides; the other, queued on the payment behind it, reads the decision.
    assert outcomes.count("ok") == 1, outcomes
    (refusal,) = [outcome for outcome in outcomes if outcome != "ok"]
    assert re.fullmatch(
        r"This dispute is already decided \(partly refunded, 2026-12-01 15:00 UTC\); it cannot"
        r" be decided again\.",
        refusal,
    ), refusal
    refund = PaymentCommand.objects.get(kind=CommandKind.REFUND)
    assert refund.amount_minor == (3000 if outcomes[0] == "ok" else 5000)
    dispute.refresh_from_db()
    assert dispute.refund_minor == refund.amount_minor
    assert Payment.objects.get(pk=dispute.payment_id).refunded_minor == refund.amount_minor
    assert StaffAction.objects.filter(dispute=dispute).count() == 1
    assert OutboundEmail.objects.filter(key=f"dispute-decided:{dispute.pk}").count() == 1
