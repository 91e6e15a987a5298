"""Disputes end to end with both payment providers: the client's dispute, staff's partial
refund, the refund command sent to the provider and what the provider then holds; and the
chargeback, which arrives from Stripe as signed webhooks through the real inbox.

Stripe is localstripe (a real HTTP server with Stripe's API, started by billing's fixtures).
It has no disputes, so the chargeback events are built here and signed with the webhook
secret, as Stripe signs them; the payment they are about is a real one at localstripe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import stripe
import time_machine
from pytest_django import DjangoCaptureOnCommitCallbacks, Settings

from accounts.models import OutboundEmail
from accounts.tests.factories import StaffFactory, UserFactory
from billing import services as billing
from billing.models import (
    CommandKind,
    CommandState,
    LocalIntent,
    LocalOperation,
    PaymentCommand,
    PaymentState,
    PayoutAccount,
    Settlement,
    WebhookEvent,
)
from billing.tests.localstripe import WEBHOOK_SECRET, browser_confirms
from moderation import services
from moderation.models import (
    Dispute,
    DisputeSource,
    DisputeState,
    StaffAction,
    StaffActionKind,
)
from moderation.services import ModerationError, Outcome
from moderation.tests.helpers import payment_of, payout_held, records, seat_charged
from rooms import services as rooms
from rooms.models import RoomEvent, Seat, SeatState
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    weekdays_available,
)

CHARGED = 12000  # the offering's fixed price, 120.00 EUR
REFUND = 3000  # staff's partial refund, 30.00 EUR
NOTE = "The expert joined 20 minutes late; a quarter of the price is refunded."


@pytest.fixture(autouse=True)
def _an_hour_after_the_call(settings: Settings) -> Iterator[None]:
    settings.DISPUTE_WINDOW_HOURS = 72
    settings.PAYOUT_DELAY_HOURS = 72
    settings.PLATFORM_FEE_PERCENT = 15
    with time_machine.travel(CALL_START + dt.timedelta(hours=1)):
        yield


def _seat_paid_at_stripe(api: stripe.StripeClient) -> Seat:
    """A client's seat paid the way the pay page does it with Stripe: a manual-capture
    PaymentIntent at localstripe, confirmed with a card by Stripe.js, the browser back."""
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert)
    with time_machine.travel(NOW):
        seat = rooms.booking_reserve(UserFactory.create(), offering, CALL_START)
        payment_id = seat.payment_id
        assert payment_id is not None
        billing.payment_checkout(payment_id)
        browser_confirms(api, payment_of(seat).intent_id)
        billing.payment_sync(payment_id, source="browser_return")
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    return seat


@pytest.fixture
def stripe_seat(stripe_api: stripe.StripeClient) -> Seat:
    """A captured seat at localstripe: paid, the call held, settled, the capture sent."""
    seat = seat_charged(_seat_paid_at_stripe(stripe_api))
    assert payment_of(seat).provider == "stripe"
    return seat


def _partial_refund_decided(seat: Seat) -> tuple[Dispute, PaymentCommand]:
    """The client disputes, staff refund part of the charge; the command is not sent yet."""
    dispute = services.dispute_open(
        seat.pk, seat.client, reason="expert_absent", text="The expert came 20 minutes late."
    )
    assert payout_held(seat)
    staff = StaffFactory.create()

    dispute = services.dispute_resolve(
        dispute.pk, actor=staff, outcome=Outcome.REFUND_PARTIAL, note=NOTE, refund_minor=REFUND
    )

    command = PaymentCommand.objects.get(payment=payment_of(seat), kind=CommandKind.REFUND)
    assert (command.amount_minor, command.state) == (REFUND, CommandState.PENDING)
    # Counted when decided, so no second refund can exceed the charge meanwhile.
    assert payment_of(seat).refunded_minor == REFUND
    action = StaffAction.objects.get(dispute=dispute)
    assert (action.actor, action.kind, action.reason) == (
        staff,
        StaffActionKind.DISPUTE_RESOLVE,
        NOTE,
    )
    assert action.data == {"outcome": "refund_partial", "refund_minor": REFUND, "currency": "EUR"}
    return dispute, command


def _decided_as_a_partial_refund(seat: Seat, dispute: Dispute) -> None:
    dispute.refresh_from_db()
    assert (dispute.state, dispute.refund_minor, dispute.resolution_note) == (
        DisputeState.PARTIALLY_REFUNDED,
        REFUND,
        NOTE,
    )
    payment = payment_of(seat)
    assert (payment.state, payment.captured_minor, payment.refunded_minor) == (
        PaymentState.CAPTURED,
        CHARGED,
        REFUND,
    )
    assert list(payment.events.values_list("kind", flat=True))[-2:] == [
        "payout_released",
        "refund_sent",
    ]
    assert not payout_held(seat)
    email = OutboundEmail.objects.get(key=f"dispute-decided:{dispute.pk}")
    assert email.to == seat.client.email
    assert "30.00 EUR" in email.body


# --- A client's dispute, refunded in part, sent to each provider ------------------------------


@pytest.mark.django_db
def test_a_partial_refund_of_a_dispute_reaches_the_local_provider_and_shrinks_the_payout(
    settings: Settings,
) -> None:
    settings.PAYMENT_PROVIDER = "local"
    seat = seat_charged()
    payment = payment_of(seat)
    assert (payment.provider, payment.state, payment.captured_minor) == (
        "local",
        PaymentState.CAPTURED,
        CHARGED,
    )

    dispute, command = _partial_refund_decided(seat)
    assert billing.command_execute(command.pk) == CommandState.SUCCEEDED

    at_provider = LocalIntent.objects.get(pk=payment.intent_id)
    assert (at_provider.status, at_provider.captured_minor, at_provider.refunded_minor) == (
        "succeeded",
        CHARGED,
        REFUND,
    )
    operation = LocalOperation.objects.get(intent=at_provider, operation="refund_create")
    assert (operation.amount_minor, operation.idempotency_key) == (
        REFUND,
        command.idempotency_key,
    )
    command.refresh_from_db()
    assert (command.state, command.provider_ref) == (CommandState.SUCCEEDED, operation.outcome)
    _decided_as_a_partial_refund(seat, dispute)

    # After the window the expert is paid their share less their share of the refund: 85 %
    # of 120.00 is 102.00; 85 % of the 30.00 refunded is 25.50.
    PayoutAccount.objects.create(
        user=payment.payee, provider="local", account_id="lacct_dispute", payouts_enabled=True
    )
    due_at = Settlement.objects.get(payment=payment).payout_due_at
    # The window's last instant still belongs to the client (a dispute then holds the payout).
    assert billing.payouts_due_create(now=due_at) == 0
    assert billing.payouts_due_create(now=due_at + dt.timedelta(seconds=1)) == 1
    transfer = PaymentCommand.objects.get(payment=payment, kind=CommandKind.TRANSFER)
    assert (transfer.amount_minor, transfer.destination) == (7650, "lacct_dispute")


@pytest.mark.django_db
def test_a_partial_refund_of_a_dispute_reaches_stripe(
    stripe_api: stripe.StripeClient,
    stripe_seat: Seat,
) -> None:
    payment = payment_of(stripe_seat)
    charge = stripe_api.v1.charges.retrieve(payment.charge_id)
    assert (charge.amount, charge.captured, charge.payment_intent) == (
        CHARGED,
        True,
        payment.intent_id,
    )
    # localstripe counts an uncaptured rest as refunded: compare with what it says now.
    refunded_before = charge.amount_refunded

    dispute, command = _partial_refund_decided(stripe_seat)
    assert stripe_api.v1.charges.retrieve(payment.charge_id).amount_refunded == refunded_before
    assert billing.command_execute(command.pk) == CommandState.SUCCEEDED

    assert stripe_api.v1.charges.retrieve(payment.charge_id).amount_refunded == (
        refunded_before + REFUND
    )
    command.refresh_from_db()
    refund = stripe_api.v1.refunds.retrieve(command.provider_ref)
    assert (refund.amount, refund.charge, refund.status) == (REFUND, charge.id, "succeeded")
    assert refund.metadata is not None
    assert refund.metadata.to_dict() == {"payment": str(payment.pk), "command": str(command.pk)}
    _decided_as_a_partial_refund(stripe_seat, dispute)
    # A duplicate of the task finds the command done: nothing more is refunded.
    assert billing.command_execute(command.pk) == CommandState.SUCCEEDED
    assert stripe_api.v1.charges.retrieve(payment.charge_id).amount_refunded == (
        refunded_before + REFUND
    )


# --- Chargebacks: the bank's dispute, from Stripe's webhooks ---------------------------------


Deliver = Callable[..., WebhookEvent | None]


@pytest.fixture
def deliver_event(django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks) -> Deliver:
    """Stripe sends an event of `type` about `obj`, signed with the webhook secret; it goes
    through the inbox (verify, store once, process after commit)."""

    def send(type: str, obj: dict[str, Any], *, event_id: str) -> WebhookEvent | None:
        body = json.dumps(
            {
                "id": event_id,
                "object": "event",
                "api_version": "2024-06-20",
                "created": int(time.time()),
                "type": type,
                "livemode": False,
                "data": {"object": obj},
            }
        ).encode()
        timestamp = int(time.time())
        mac = hmac.new(WEBHOOK_SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        with django_capture_on_commit_callbacks(execute=True):
            event = billing.webhook_receive("stripe", body, f"t={timestamp},v1={mac.hexdigest()}")
        if event is not None:
            event.refresh_from_db()
            assert (event.processed_at is not None, event.last_error) == (True, "")
        return event

    return send


@pytest.fixture
def deliver(stripe_seat: Seat, deliver_event: Deliver) -> Deliver:
    """Stripe sends `charge.dispute.<kind>` about the seat's payment."""
    payment = payment_of(stripe_seat)

    def send(
        kind: str, status: str, *, event_id: str = "", dispute_id: str = "dp_1"
    ) -> WebhookEvent | None:
        dispute = {
            "id": dispute_id,
            "object": "dispute",
            "amount": CHARGED,
            "charge": payment.charge_id,
            "currency": "eur",
            "payment_intent": payment.intent_id,
            "reason": "fraudulent",
            "status": status,
        }
        return deliver_event(
            f"charge.dispute.{kind}",
            dispute,
            event_id=event_id or f"evt_{dispute_id}_{kind}_{status}",
        )

    return send


def _chargeback(seat: Seat) -> Dispute:
    return Dispute.objects.get(seat=seat, source=DisputeSource.CHARGEBACK)


@pytest.mark.django_db
def test_a_chargeback_webhook_opens_a_dispute_and_holds_the_payout(
    stripe_seat: Seat, deliver: Deliver
) -> None:
    assert not payout_held(stripe_seat)

    deliver("created", "needs_response")

    dispute = _chargeback(stripe_seat)
    assert (dispute.state, dispute.reason, dispute.provider_dispute_id) == (
        DisputeState.OPEN,
        "chargeback",
        "dp_1",
    )
    assert (dispute.client_id, dispute.payment_id, dispute.charged_minor) == (
        stripe_seat.client_id,
        stripe_seat.payment_id,
        CHARGED,
    )
    assert "fraudulent" in dispute.text
    assert payout_held(stripe_seat)
    event = RoomEvent.objects.get(room_id=stripe_seat.room_id, kind="disputed")
    assert (event.actor, event.data["reason"]) == (None, "chargeback")


@pytest.mark.django_db
def test_a_chargeback_won_lets_the_payout_go(stripe_seat: Seat, deliver: Deliver) -> None:
    deliver("created", "needs_response")

    deliver("closed", "won")

    dispute = _chargeback(stripe_seat)
    assert (dispute.state, dispute.resolved_by, dispute.refund_minor) == (
        DisputeState.CHARGEBACK_WON,
        None,
        0,
    )
    assert "the charge stands" in dispute.resolution_note
    assert not payout_held(stripe_seat)
    # The bank decided: no staff action, no refund, the money stays captured.
    assert not StaffAction.objects.exists()
    assert not PaymentCommand.objects.filter(kind=CommandKind.REFUND).exists()
    assert payment_of(stripe_seat).refunded_minor == 0


@pytest.mark.django_db
def test_a_chargeback_lost_keeps_the_payout_held(stripe_seat: Seat, deliver: Deliver) -> None:
    deliver("created", "needs_response")

    deliver("closed", "lost")

    dispute = _chargeback(stripe_seat)
    assert dispute.state == DisputeState.CHARGEBACK_LOST
    assert "returned the money" in dispute.resolution_note
    assert payout_held(stripe_seat)
    PayoutAccount.objects.create(
        user=payment_of(stripe_seat).payee,
        provider="stripe",
        account_id="acct_dispute_lost",
        payouts_enabled=True,
    )
    assert billing.payouts_due_create(now=CALL_START + dt.timedelta(days=30)) == 0


@pytest.mark.django_db
def test_a_chargeback_delivered_twice_opens_one_dispute_and_decides_it_once(
    stripe_seat: Seat, deliver: Deliver
) -> None:
    assert deliver("created", "needs_response") is not None
    assert deliver("created", "needs_response") is None  # the same event: a duplicate
    # The same chargeback in an event of its own (Stripe retries can mint new events).
    assert deliver("created", "needs_response", event_id="evt_again") is not None
    deliver("closed", "lost")
    assert deliver("closed", "lost") is None
    deliver("closed", "won", event_id="evt_closed_again")

    dispute = Dispute.objects.get()
    assert dispute.state == DisputeState.CHARGEBACK_LOST
    kinds = list(
        RoomEvent.objects.filter(room_id=stripe_seat.room_id).values_list("kind", flat=True)
    )
    assert (kinds.count("disputed"), kinds.count("dispute_resolved")) == (1, 1)
    assert payment_of(stripe_seat).events.filter(kind="payout_held").count() == 1
    assert payout_held(stripe_seat)


@pytest.mark.django_db
def test_a_chargeback_closed_before_it_was_opened_still_ends_decided_once(
    stripe_seat: Seat, deliver: Deliver
) -> None:
    deliver("closed", "won")
    deliver("created", "needs_response")

    dispute = Dispute.objects.get()
    assert (dispute.source, dispute.state) == (
        DisputeSource.CHARGEBACK,
        DisputeState.CHARGEBACK_WON,
    )
    assert not payout_held(stripe_seat)
    kinds = list(payment_of(stripe_seat).events.values_list("kind", flat=True))
    assert (kinds.count("dispute_opened"), kinds.count("dispute_closed")) == (1, 1)


@pytest.mark.django_db
def test_staff_cannot_decide_a_chargeback_and_nothing_is_written(
    stripe_seat: Seat, deliver: Deliver
) -> None:
    deliver("created", "needs_response")
    dispute = _chargeback(stripe_seat)
    before = records(stripe_seat)

    for outcome, amount in [(Outcome.REFUND_PARTIAL, REFUND), (Outcome.REJECT, None)]:
        with pytest.raises(ModerationError, match="decided by the card's bank"):
            services.dispute_resolve(
                dispute.pk,
                actor=StaffFactory.create(),
                outcome=outcome,
                note="The client says it was not fraud.",
                refund_minor=amount,
            )

    assert records(stripe_seat) == before
    dispute.refresh_from_db()
    assert dispute.state == DisputeState.OPEN


@pytest.mark.django_db
def test_a_client_dispute_cannot_be_refunded_while_the_bank_handles_a_chargeback(
    stripe_seat: Seat, deliver: Deliver
) -> None:
    """The client disputed here and also asked their bank. While the bank's chargeback is open
    the bank decides the money: a disputed charge can be refunded only while Stripe's dispute
    says `is_charge_refundable`, and a lost chargeback has already given the money back. A
    refund decided here would be refused at Stripe after the client was emailed "refunded", or
    pay the client twice. So it is refused when staff decide; a rejection stays possible."""
    client_dispute = services.dispute_open(
        stripe_seat.pk, stripe_seat.client, reason="conduct", text="The expert was rude."
    )
    deliver("created", "needs_response")
    before = records(stripe_seat)

    with pytest.raises(ModerationError, match="chargeback"):
        services.dispute_resolve(
            client_dispute.pk,
            actor=StaffFactory.create(),
            outcome=Outcome.REFUND_FULL,
            note="The expert was rude; refunded in full.",
        )

    assert records(stripe_seat) == before


@pytest.mark.django_db
def test_a_chargeback_closed_with_a_status_nobody_knows_is_decided_safely_and_says_so(
    stripe_seat: Seat, deliver: Deliver
) -> None:
    """Left open, it could never be decided: staff cannot decide a chargeback, and the bank
    will not write again. Decided as lost, the payout stays held and staff read why."""
    deliver("created", "needs_response")

    deliver("closed", "something_new")

    dispute = _chargeback(stripe_seat)
    assert dispute.state == DisputeState.CHARGEBACK_LOST
    assert "'something_new'" in dispute.resolution_note
    assert "provider's dashboard" in dispute.resolution_note
    assert payout_held(stripe_seat)


# --- A refund the provider refuses ----------------------------------------------------------


def _reopened_after_the_refund_failed(
    seat: Seat, dispute: Dispute, command: PaymentCommand
) -> None:
    dispute.refresh_from_db()
    assert (dispute.state, dispute.refund_minor, dispute.resolved_at, dispute.refund_command) == (
        DisputeState.OPEN,
        0,
        None,
        command,
    )
    assert dispute.refund_error
    # The charge is whole again, the payout is held again, and the client knows.
    assert payment_of(seat).refunded_minor == 0
    assert payout_held(seat)
    email = OutboundEmail.objects.get(key=f"dispute-refund-failed:{dispute.pk}:{command.pk}")
    assert "did not go through" in email.body and "30.00 EUR" in email.body
    event = RoomEvent.objects.get(room_id=seat.room_id, kind="dispute_refund_failed")
    assert event.data["command"] == command.pk
    # Staff decide it again, with the whole charge refundable once more.
    again = services.dispute_resolve(
        dispute.pk, actor=StaffFactory.create(), outcome=Outcome.REJECT, note="Decided again."
    )
    assert (again.state, again.refund_error) == (DisputeState.REJECTED, "")
    assert not payout_held(seat)


@pytest.mark.django_db
def test_a_refund_the_local_provider_refuses_opens_the_dispute_again(settings: Settings) -> None:
    settings.PAYMENT_PROVIDER = "local"
    seat = seat_charged()
    dispute, command = _partial_refund_decided(seat)
    # Meanwhile the whole charge went back another way: the provider refuses this refund.
    LocalIntent.objects.filter(pk=payment_of(seat).intent_id).update(refunded_minor=CHARGED)

    assert billing.command_execute(command.pk) == CommandState.FAILED

    _reopened_after_the_refund_failed(seat, dispute, command)


@pytest.mark.django_db
def test_a_refund_stripe_reports_failed_later_opens_the_dispute_again_once(
    stripe_seat: Seat, deliver_event: Deliver
) -> None:
    dispute, command = _partial_refund_decided(stripe_seat)
    assert billing.command_execute(command.pk) == CommandState.SUCCEEDED
    command.refresh_from_db()
    refund = {
        "id": command.provider_ref,
        "object": "refund",
        "amount": REFUND,
        "payment_intent": payment_of(stripe_seat).intent_id,
        "status": "failed",
        "failure_reason": "expired_or_canceled_card",
        "metadata": {"payment": str(command.payment_id), "command": str(command.pk)},
    }

    deliver_event("refund.failed", refund, event_id="evt_refund_failed")
    # The same news again, under the other event type Stripe sends for it.
    deliver_event("charge.refund.updated", refund, event_id="evt_refund_updated")

    command.refresh_from_db()
    assert command.state == CommandState.FAILED
    assert "expired_or_canceled_card" in command.last_error
    assert payment_of(stripe_seat).events.filter(kind="refund_failed").count() == 1
    _reopened_after_the_refund_failed(stripe_seat, dispute, command)


@pytest.mark.django_db
def test_a_chargeback_after_the_payout_was_sent_says_so_on_the_dispute(
    stripe_seat: Seat, deliver: Deliver
) -> None:
    payment = payment_of(stripe_seat)
    PayoutAccount.objects.create(
        user=payment.payee, provider="stripe", account_id="acct_paid", payouts_enabled=True
    )
    due_at = Settlement.objects.get(payment=payment).payout_due_at
    assert billing.payouts_due_create(now=due_at + dt.timedelta(seconds=1)) == 1

    deliver("created", "needs_response")

    dispute = _chargeback(stripe_seat)
    assert "payout of 102.00 EUR had already been sent" in dispute.text
    assert payment_of(stripe_seat).events.filter(kind="payout_hold_too_late").exists()
