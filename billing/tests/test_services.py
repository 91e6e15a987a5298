"""billing's services on the local provider: holds, settlements, commands, refunds, payouts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
import time_machine
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import OutboundEmail, User
from accounts.tests.factories import UserFactory
from billing import services
from billing.errors import BillingError, PaymentRefused
from billing.gateways.base import ProviderUnavailable, UnexpectedState
from billing.gateways.local import TEST_CARD, LocalGateway
from billing.models import (
    CommandKind,
    CommandState,
    LocalIntent,
    LocalOperation,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
    PayoutAccount,
    Settlement,
    WebhookEvent,
)
from billing.tests.helpers import commands_run_pending

pytestmark = pytest.mark.django_db

DECLINE = "4000000000000002"


def _open(amount: int = 5000, **fields: Any) -> Payment:
    return services.payment_open(
        payer=UserFactory.create(),
        payee=UserFactory.create(),
        amount_minor=amount,
        currency="EUR",
        description="Architecture review",
        **fields,
    )


def _authorized(amount: int = 5000) -> Payment:
    payment = _open(amount)
    return services.payment_local_card(payment.pk, card_number=TEST_CARD)


def _rows() -> tuple[int, ...]:
    return (
        Payment.objects.count(),
        PaymentEvent.objects.count(),
        PaymentCommand.objects.count(),
        Settlement.objects.count(),
    )


def _settle(payment: Payment, amount: int, rule: str = "fixed") -> Settlement:
    return services.payment_settle(
        payment,
        amount_minor=amount,
        currency=payment.currency,
        rule=rule,
        inputs={"billable_seconds": 1800},
        explanation=f"{amount} by {rule}",
    )


def test_paying_with_the_test_card_places_the_hold_and_records_it_at_the_provider() -> None:
    payment = _authorized()
    assert payment.state == PaymentState.AUTHORIZED
    assert payment.authorized_minor == 5000
    assert list(payment.events.values_list("kind", "amount_minor")) == [
        ("opened", 5000),
        ("intent_created", None),
        ("authorized", 5000),
    ]
    intent = LocalIntent.objects.get(pk=payment.intent_id)
    assert (intent.status, intent.card_last4) == ("requires_capture", "4242")
    assert list(LocalOperation.objects.values_list("operation", "outcome")) == [
        ("intent_create", "created"),
        ("intent_confirm", "authorized"),
    ]


def test_a_declined_card_is_refused_clearly_and_the_payment_waits_for_another() -> None:
    payment = _open()
    with pytest.raises(PaymentRefused, match="declined. Try another card"):
        services.payment_local_card(payment.pk, card_number=DECLINE)
    payment.refresh_from_db()
    assert payment.state == PaymentState.PENDING
    assert payment.last_error == "Your card was declined."
    assert payment.events.filter(kind="authorization_failed").count() == 1
    # Another card on the same intent then succeeds.
    assert services.payment_local_card(payment.pk, card_number=TEST_CARD).state == "authorized"


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [(0, "EUR", "more than zero"), (-5, "EUR", "more than zero"), (100, "XYZ", "'XYZ' is not")],
)
def test_opening_a_payment_with_a_bad_amount_or_currency_writes_nothing(
    amount: int, currency: str, message: str
) -> None:
    payer, payee = UserFactory.create(), UserFactory.create()
    before = _rows()
    with pytest.raises(PaymentRefused, match=message):
        services.payment_open(
            payer=payer, payee=payee, amount_minor=amount, currency=currency, description="x"
        )
    assert _rows() == before


def test_a_partial_settlement_captures_that_amount_and_releases_the_rest() -> None:
    payment = _authorized(5000)
    settlement = _settle(payment, 3000)
    assert (settlement.platform_fee_minor, settlement.payout_minor) == (450, 2550)
    command = PaymentCommand.objects.get(payment=payment)
    assert (command.kind, command.amount_minor, command.state) == ("capture", 3000, "pending")
    assert commands_run_pending() == [CommandState.SUCCEEDED]
    payment.refresh_from_db()
    assert payment.state == PaymentState.CAPTURED
    assert (payment.captured_minor, payment.released_minor) == (3000, 2000)
    assert LocalIntent.objects.get(pk=payment.intent_id).captured_minor == 3000


def test_settling_again_returns_the_first_settlement_and_writes_one_capture() -> None:
    payment = _authorized()
    first = _settle(payment, 3000)
    again = _settle(payment, 3000)
    assert first.pk == again.pk
    assert PaymentCommand.objects.filter(payment=payment).count() == 1


def test_a_different_second_settlement_is_refused_and_writes_nothing() -> None:
    payment = _authorized()
    _settle(payment, 3000)
    before = _rows()
    with pytest.raises(PaymentRefused, match="already settled"):
        _settle(payment, 1000)
    assert _rows() == before


def test_a_zero_settlement_cancels_the_hold() -> None:
    payment = _authorized()
    services.payment_release(payment, reason="the expert canceled")
    assert commands_run_pending() == [CommandState.SUCCEEDED]
    payment.refresh_from_db()
    assert payment.state == PaymentState.CANCELED
    assert (payment.captured_minor, payment.released_minor) == (0, 5000)
    assert LocalIntent.objects.get(pk=payment.intent_id).status == "canceled"


def test_releasing_a_payment_never_sent_to_the_provider_ends_it_without_a_command() -> None:
    payment = _open()
    services.payment_release(payment, reason="the reservation expired unpaid")
    payment.refresh_from_db()
    assert payment.state == PaymentState.CANCELED
    assert not PaymentCommand.objects.exists()
    with pytest.raises(PaymentRefused, match="no longer waiting for payment"):
        services.payment_checkout(payment.pk)


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        (6000, "EUR", "more than the hold"),
        (100, "USD", "settlement is in USD but the payment is in EUR"),
        (-1, "EUR", "cannot be negative"),
    ],
)
def test_a_settlement_over_the_hold_in_another_currency_or_negative_writes_nothing(
    amount: int, currency: str, message: str
) -> None:
    payment = _authorized(5000)
    before = _rows()
    with pytest.raises(PaymentRefused, match=message):
        services.payment_settle(
            payment, amount_minor=amount, currency=currency, rule="x", inputs={}, explanation="x"
        )
    assert _rows() == before


def test_capturing_a_canceled_hold_is_refused_and_writes_nothing() -> None:
    payment = _authorized()
    services.payment_release(payment, reason="client canceled in time")
    commands_run_pending()
    before = _rows()
    with pytest.raises(PaymentRefused, match="already settled"):
        _settle(payment, 1000)
    assert _rows() == before
    # And at the provider itself, a capture of the canceled intent is refused too.
    with pytest.raises(UnexpectedState, match="status of canceled"):
        LocalGateway().intent_capture(payment.intent_id, amount_minor=1000, idempotency_key="k")


def test_an_unpaid_payment_cannot_be_charged() -> None:
    payment = _open()
    with pytest.raises(PaymentRefused, match="Nothing can be charged"):
        _settle(payment, 100)


def _captured(amount: int = 5000, charged: int = 4000) -> Payment:
    payment = _authorized(amount)
    _settle(payment, charged)
    commands_run_pending()
    payment.refresh_from_db()
    return payment


def test_a_partial_refund_goes_to_the_provider_and_counts_against_the_charge() -> None:
    payment = _captured()
    staff = UserFactory.create(is_staff=True)
    command = services.payment_refund(
        payment.pk, amount_minor=1500, currency="EUR", reason="audio dropped", actor=staff
    )
    payment.refresh_from_db()
    assert payment.refunded_minor == 1500
    assert services.command_execute(command.pk) == CommandState.SUCCEEDED
    command.refresh_from_db()
    assert command.provider_ref.startswith("lre_")
    assert LocalIntent.objects.get(pk=payment.intent_id).refunded_minor == 1500
    decided = payment.events.get(kind="refund_decided")
    assert (decided.actor, decided.data["reason"]) == (staff, "audio dropped")


@pytest.mark.parametrize(
    ("amount", "currency", "reason", "message"),
    [
        (4001, "EUR", "too much", "At most 40.00 EUR can be refunded"),
        (0, "EUR", "zero", "more than zero"),
        (100, "GBP", "wrong currency", "refund is in GBP but the payment is in EUR"),
        (100, "EUR", "  ", "Say why"),
    ],
)
def test_a_bad_refund_is_refused_and_writes_nothing(
    amount: int, currency: str, reason: str, message: str
) -> None:
    payment = _captured()
    before = _rows()
    with pytest.raises(PaymentRefused, match=message):
        services.payment_refund(
            payment.pk, amount_minor=amount, currency=currency, reason=reason, actor=None
        )
    assert _rows() == before
    payment.refresh_from_db()
    assert payment.refunded_minor == 0


def test_refunds_together_never_exceed_the_charge() -> None:
    payment = _captured(charged=4000)
    services.payment_refund(payment.pk, amount_minor=3000, currency="EUR", reason="a", actor=None)
    with pytest.raises(PaymentRefused, match="At most 10.00 EUR"):
        services.payment_refund(
            payment.pk, amount_minor=1001, currency="EUR", reason="b", actor=None
        )
    services.payment_refund(payment.pk, amount_minor=1000, currency="EUR", reason="c", actor=None)
    assert commands_run_pending() == [CommandState.SUCCEEDED, CommandState.SUCCEEDED]


def test_the_database_refuses_totals_that_do_not_add_up() -> None:
    payment = _captured(charged=4000)
    for fields in (
        {"refunded_minor": 4001},
        {"captured_minor": 5001},
        {"released_minor": 2000},
        {"authorized_minor": 6000},
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            Payment.objects.filter(pk=payment.pk).update(**fields)


def test_a_refund_only_applies_to_a_charged_payment() -> None:
    payment = _authorized()
    with pytest.raises(PaymentRefused, match="Only a charged payment"):
        services.payment_refund(payment.pk, amount_minor=1, currency="EUR", reason="x", actor=None)


def test_a_refund_the_provider_refuses_fails_and_no_longer_counts() -> None:
    payment = _captured(charged=4000)
    command = services.payment_refund(
        payment.pk, amount_minor=1000, currency="EUR", reason="x", actor=None
    )
    # The charge was refunded outside Parley meanwhile, so the provider has less left.
    LocalIntent.objects.filter(pk=payment.intent_id).update(refunded_minor=3500)
    assert services.command_execute(command.pk) == CommandState.FAILED
    payment.refresh_from_db()
    assert payment.refunded_minor == 0
    assert payment.events.filter(kind="refund_failed").count() == 1


def test_provider_trouble_leaves_the_command_for_a_later_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payment = _authorized()
    _settle(payment, 3000)
    command = PaymentCommand.objects.get(payment=payment)

    def unavailable(*args: Any, **kwargs: Any) -> None:
        raise ProviderUnavailable("connection reset")

    monkeypatch.setattr(LocalGateway, "intent_capture", unavailable)
    assert services.command_execute(command.pk) == CommandState.PENDING
    command.refresh_from_db()
    assert command.attempts == 1
    assert command.leased_until is None
    assert command.next_attempt_at > timezone.now()
    assert command.last_error == "connection reset"
    assert services.commands_due_ids() == []
    monkeypatch.undo()
    with time_machine.travel(command.next_attempt_at + dt.timedelta(seconds=1)):
        assert services.commands_due_ids() == [command.pk]
        assert services.command_execute(command.pk) == CommandState.SUCCEEDED


def test_a_command_another_worker_holds_is_not_sent_twice() -> None:
    payment = _authorized()
    _settle(payment, 3000)
    command = PaymentCommand.objects.get(payment=payment)
    PaymentCommand.objects.filter(pk=command.pk).update(
        leased_until=timezone.now() + dt.timedelta(seconds=60)
    )
    assert services.command_execute(command.pk) == CommandState.PENDING
    assert not LocalOperation.objects.filter(operation="intent_capture").exists()


def test_an_authorization_arriving_after_the_release_is_given_back() -> None:
    payment = _open()
    services.payment_checkout(payment.pk)
    payment.refresh_from_db()
    services.payment_release(payment, reason="the reservation expired unpaid")
    intent = LocalGateway().intent_confirm_card(payment.intent_id, card_number=TEST_CARD)
    services.payment_apply_intent(payment.pk, intent, source="webhook")
    assert PaymentCommand.objects.filter(payment=payment, kind="cancel").count() == 1
    commands_run_pending()
    payment.refresh_from_db()
    assert payment.state == PaymentState.CANCELED
    assert LocalIntent.objects.get(pk=payment.intent_id).status == "canceled"


def test_payment_events_are_append_only() -> None:
    payment = _authorized()
    event = payment.events.first()
    assert event is not None
    with pytest.raises(TypeError, match="append-only"):
        event.save()
    with pytest.raises(TypeError, match="append-only"):
        event.delete()
    with pytest.raises(TypeError, match="append-only"):
        PaymentEvent.objects.filter(payment=payment).update(kind="x")
    with pytest.raises(TypeError, match="append-only"):
        PaymentEvent.objects.filter(payment=payment).delete()


# --- Holds placed later ---------------------------------------------------------------------


def _card_saved(hold_at: dt.datetime) -> Payment:
    payment = _open(hold_at=hold_at)
    payment = services.payment_local_card(payment.pk, card_number=TEST_CARD)
    assert payment.state == PaymentState.CARD_SAVED
    return payment


def test_a_saved_card_gets_its_hold_when_due_and_not_before() -> None:
    hold_at = timezone.now() + dt.timedelta(days=9)
    payment = _card_saved(hold_at)
    assert payment.intent_id == ""
    assert services.holds_due_ids() == []
    with time_machine.travel(hold_at + dt.timedelta(seconds=1)):
        assert services.holds_due_ids() == [payment.pk]
        payment = services.payment_hold_place(payment.pk)
        assert services.payment_hold_place(payment.pk).state == PaymentState.AUTHORIZED
    assert payment.state == PaymentState.AUTHORIZED
    assert LocalIntent.objects.filter(kind="payment").count() == 1


def test_a_saved_card_that_declines_later_asks_the_payer_to_pay_again(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    hold_at = timezone.now() + dt.timedelta(days=9)
    payment = _card_saved(hold_at)
    # The card went bad after it was saved (the local provider's ids remember the outcome).
    Payment.objects.filter(pk=payment.pk).update(payment_method_id="lpm_decline_0002")
    with time_machine.travel(hold_at + dt.timedelta(seconds=1)):
        payment = services.payment_hold_place(payment.pk)
    assert payment.state == PaymentState.CARD_SAVED
    assert payment.hold_at is None
    assert payment.last_error == "Your card was declined."
    email = OutboundEmail.objects.get(to=payment.payer.email)
    assert f"/pay/{payment.pk}/" in email.body
    assert services.holds_due_ids() == []
    # Paying again on the pay page places the hold now.
    assert services.payment_local_card(payment.pk, card_number=TEST_CARD).state == "authorized"


def test_the_test_card_form_refuses_a_payment_of_the_stripe_provider() -> None:
    payment = _open()
    Payment.objects.filter(pk=payment.pk).update(provider="stripe")
    with pytest.raises(PaymentRefused, match="at Stripe"):
        services.payment_local_card(payment.pk, card_number=TEST_CARD)


# --- Payouts --------------------------------------------------------------------------------


def _payout_ready(expert: User) -> PayoutAccount:
    return PayoutAccount.objects.create(
        user=expert, provider="local", account_id=f"lacct_{expert.pk}", payouts_enabled=True
    )


def test_the_expert_is_paid_their_share_after_the_dispute_window() -> None:
    payment = _captured(charged=4000)
    _payout_ready(payment.payee)
    assert services.payouts_due_create() == 0  # still inside the 72 h window
    with time_machine.travel(timezone.now() + dt.timedelta(hours=73)):
        assert services.payouts_due_create() == 1
        assert services.payouts_due_create() == 0
    transfer = PaymentCommand.objects.get(kind=CommandKind.TRANSFER)
    assert (transfer.amount_minor, transfer.destination) == (3400, f"lacct_{payment.payee_id}")
    assert services.command_execute(transfer.pk) == CommandState.SUCCEEDED
    transfer.refresh_from_db()
    assert transfer.provider_ref.startswith("ltr_")


def test_a_refund_shrinks_the_payout_and_a_held_settlement_is_not_paid() -> None:
    refunded, held = _captured(charged=4000), _captured(charged=4000)
    for payment in (refunded, held):
        _payout_ready(payment.payee)
    services.payment_refund(refunded.pk, amount_minor=1000, currency="EUR", reason="x", actor=None)
    assert set(commands_run_pending()) == {CommandState.SUCCEEDED}
    Settlement.objects.filter(payment=held).update(payout_held=True)
    with time_machine.travel(timezone.now() + dt.timedelta(hours=73)):
        assert services.payouts_due_create() == 1
    transfer = PaymentCommand.objects.get(kind=CommandKind.TRANSFER)
    assert transfer.payment_id == refunded.pk
    assert transfer.amount_minor == 3400 - 850


def test_the_payout_waits_for_a_refund_not_sent_yet_and_counts_it_only_if_it_went_through() -> None:
    """A refund still in the outbox may fail and give its amount back to the charge; paying
    the expert the shrunk share first would leave them short, paying the full share first
    would leave the refund unfunded."""
    payment = _captured(charged=4000)
    _payout_ready(payment.payee)
    command = services.payment_refund(
        payment.pk, amount_minor=1000, currency="EUR", reason="x", actor=None
    )
    later = timezone.now() + dt.timedelta(hours=73)
    with time_machine.travel(later):
        assert services.payouts_due_create() == 0
    # The provider refuses it: the charge is whole again, and so is the expert's share.
    LocalIntent.objects.filter(pk=payment.intent_id).update(refunded_minor=4000)
    assert services.command_execute(command.pk) == CommandState.FAILED
    assert Payment.objects.get(pk=payment.pk).refunded_minor == 0
    with time_machine.travel(later):
        assert services.payouts_due_create() == 1
    assert PaymentCommand.objects.get(kind=CommandKind.TRANSFER).amount_minor == 3400


def test_a_failed_transfer_is_tried_again_only_after_the_payout_account_changes() -> None:
    payment = _captured(charged=4000)
    account = _payout_ready(payment.payee)
    later = timezone.now() + dt.timedelta(hours=73)
    with time_machine.travel(later):
        assert services.payouts_due_create() == 1
    first = PaymentCommand.objects.get(kind=CommandKind.TRANSFER)
    PaymentCommand.objects.filter(pk=first.pk).update(
        state=CommandState.FAILED, finished_at=later, last_error="account closed"
    )
    with time_machine.travel(later + dt.timedelta(minutes=10)):
        # The same account would fail the same way: nothing is sent every sweep.
        assert services.payouts_due_create() == 0
    PayoutAccount.objects.filter(pk=account.pk).update(
        status_at=later + dt.timedelta(hours=1), account_id="lacct_new"
    )
    with time_machine.travel(later + dt.timedelta(hours=2)):
        assert services.payouts_due_create() == 1
        assert services.payouts_due_create() == 0
    again = PaymentCommand.objects.filter(kind=CommandKind.TRANSFER).exclude(pk=first.pk).get()
    assert (again.state, again.destination) == (CommandState.PENDING, "lacct_new")


def test_an_expert_without_a_payout_account_is_not_paid_yet() -> None:
    _captured()
    with time_machine.travel(timezone.now() + dt.timedelta(hours=73)):
        assert services.payouts_due_create() == 0


def test_a_billing_error_is_the_base_of_every_refusal() -> None:
    assert issubclass(PaymentRefused, BillingError)


# --- The room close's seam ------------------------------------------------------------------


def test_a_call_is_settled_from_its_inputs_and_the_settlement_keeps_them() -> None:
    payment = _authorized(6000)  # 30 min at 2.00 EUR
    settlement = services.payment_settle_call(
        payment,
        pricing="per_minute",
        price_minor=200,
        cap_minor=6000,
        connected_seconds=601,
        billable_seconds=601,
        currency="EUR",
    )
    assert (settlement.rule, settlement.amount_minor) == ("per_minute", 2200)
    assert settlement.inputs["billable_seconds"] == 601
    assert settlement.inputs["rounding"] == "every started minute"
    assert settlement.explanation == "601 s connected → 11 started minutes × 2.00 EUR = 22.00 EUR."
    command = PaymentCommand.objects.get(payment=payment)
    assert (command.kind, command.amount_minor) == ("capture", 2200)


def test_a_client_no_show_captures_the_fee_and_an_expert_no_show_releases_the_hold() -> None:
    client_absent, expert_absent = _authorized(9000), _authorized(9000)
    inputs: dict[str, Any] = {
        "pricing": "fixed",
        "price_minor": 9000,
        "cap_minor": 9000,
        "connected_seconds": 0,
        "billable_seconds": 0,
        "no_show_fee_percent": 50,
        "currency": "EUR",
    }
    services.payment_settle_call(client_absent, outcome="client_no_show", **inputs)
    services.payment_settle_call(expert_absent, outcome="expert_no_show", **inputs)
    assert commands_run_pending() == [CommandState.SUCCEEDED, CommandState.SUCCEEDED]
    client_absent.refresh_from_db()
    expert_absent.refresh_from_db()
    assert (client_absent.state, client_absent.captured_minor) == (PaymentState.CAPTURED, 4500)
    assert (expert_absent.state, expert_absent.released_minor) == (PaymentState.CANCELED, 9000)


def test_a_call_that_cannot_be_priced_is_refused_and_writes_nothing() -> None:
    payment = _authorized()
    before = _rows()
    with pytest.raises(PaymentRefused, match="cannot be priced: unknown outcome"):
        services.payment_settle_call(
            payment,
            pricing="fixed",
            price_minor=5000,
            cap_minor=5000,
            connected_seconds=100,
            billable_seconds=100,
            outcome="abandoned",
            currency="EUR",
        )
    assert _rows() == before


# --- Races the review found -----------------------------------------------------------------


def test_a_payment_that_ends_while_its_intent_is_created_leaves_no_intent_to_pay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    payment = _open()
    create = LocalGateway.intent_create

    def create_then_expire(self: LocalGateway, **kwargs: Any) -> Any:
        intent = create(self, **kwargs)
        # Meanwhile the reservation expired and the sweep released the payment.
        services.payment_release(Payment.objects.get(pk=payment.pk), reason="expired")
        return intent

    monkeypatch.setattr(LocalGateway, "intent_create", create_then_expire)
    with pytest.raises(PaymentRefused, match="no longer waiting for payment"):
        services.payment_checkout(payment.pk)
    assert commands_run_pending() == [CommandState.SUCCEEDED]
    payment.refresh_from_db()
    # The intent is recorded and canceled through the outbox (retried until the provider
    # answers), not by a one-off call whose failure would leave it confirmable.
    intent = LocalIntent.objects.get()
    assert (payment.state, payment.intent_id, intent.status) == (
        PaymentState.CANCELED,
        intent.id,
        "canceled",
    )
    assert (payment.authorized_minor, payment.released_minor, payment.captured_minor) == (0, 0, 0)
    assert list(payment.commands.values_list("kind", "amount_minor", "state")) == [
        (CommandKind.CANCEL, 0, CommandState.SUCCEEDED)
    ]


def test_a_hold_on_an_intent_unknown_when_the_payment_ended_is_canceled() -> None:
    payment = _open()
    services.payment_release(payment, reason="expired")
    stray = LocalGateway().intent_create(
        amount_minor=5000,
        currency="EUR",
        metadata={"payment": str(payment.pk)},
        idempotency_key="s",
    )
    intent = LocalGateway().intent_confirm_card(stray.id, card_number=TEST_CARD)
    services.payment_apply_intent(payment.pk, intent, source="webhook")
    assert commands_run_pending() == [CommandState.SUCCEEDED]
    payment.refresh_from_db()
    assert (payment.state, payment.authorized_minor, payment.released_minor) == (
        PaymentState.CANCELED,
        5000,
        5000,
    )
    assert LocalIntent.objects.get(pk=stray.id).status == "canceled"


def test_a_saved_card_waiting_for_its_hold_has_nothing_to_pay_on_the_pay_page() -> None:
    payment = _card_saved(timezone.now() + dt.timedelta(days=9))
    with pytest.raises(PaymentRefused, match="Your card is saved"):
        services.payment_checkout(payment.pk)


def test_a_webhook_whose_handler_breaks_keeps_the_error_and_counts_the_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = WebhookEvent.objects.create(
        provider="stripe",
        event_id="evt_broken",
        type="account.updated",
        payload={"object": {"id": "acct_1"}, "created": 1},
    )

    def broken(provider: str, obj: dict[str, Any], created: int = 0) -> None:
        raise RuntimeError("handler bug")

    monkeypatch.setitem(services.WEBHOOK_HANDLERS, "account.updated", broken)
    assert services.webhook_process(event.pk) is False
    event.refresh_from_db()
    assert (event.attempts, event.last_error, event.processed_at) == (
        1,
        "RuntimeError: handler bug",
        None,
    )
    assert services.webhooks_pending_ids() == [event.pk]
    monkeypatch.undo()
    assert services.webhook_process(event.pk) is True
    assert services.webhooks_pending_ids() == []


@pytest.mark.parametrize("closed", [None, "lost", "won"])
def test_no_refund_while_the_bank_holds_a_chargeback(closed: str | None) -> None:
    payment = _captured()
    PaymentEvent.objects.create(payment=payment, kind="dispute_opened", data={"dispute": "dp_1"})
    if closed:
        PaymentEvent.objects.create(
            payment=payment, kind="dispute_closed", data={"dispute": "dp_1", "status": closed}
        )

    def refund() -> PaymentCommand:
        return services.payment_refund(
            payment.pk, amount_minor=100, currency="EUR", reason="goodwill", actor=None
        )

    if closed == "won":
        assert refund().amount_minor == 100
        return
    with pytest.raises(PaymentRefused, match="chargeback"):
        refund()
    payment.refresh_from_db()
    assert payment.refunded_minor == 0
    assert not PaymentCommand.objects.filter(kind=CommandKind.REFUND).exists()


def test_a_hold_placed_as_the_payment_is_released_is_given_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hold_at = timezone.now() + dt.timedelta(days=9)
    payment = _card_saved(hold_at)
    create = LocalGateway.intent_create

    def create_then_release(self: LocalGateway, **kwargs: Any) -> Any:
        intent = create(self, **kwargs)  # off-session: authorized at once
        # Meanwhile the client canceled in time and the payment was released.
        services.payment_release(Payment.objects.get(pk=payment.pk), reason="canceled in time")
        return intent

    monkeypatch.setattr(LocalGateway, "intent_create", create_then_release)
    with time_machine.travel(hold_at + dt.timedelta(seconds=1)):
        payment = services.payment_hold_place(payment.pk)
    assert commands_run_pending() == [CommandState.SUCCEEDED]
    payment.refresh_from_db()

    intent = LocalIntent.objects.get(kind="payment")
    assert (payment.state, payment.intent_id, intent.status) == (
        PaymentState.CANCELED,
        intent.id,
        "canceled",
    )
    assert (payment.authorized_minor, payment.released_minor, payment.captured_minor) == (
        5000,
        5000,
        0,
    )
    assert list(payment.commands.values_list("kind", "amount_minor", "state")) == [
        (CommandKind.CANCEL, 0, CommandState.SUCCEEDED)
    ]
    assert Settlement.objects.get(payment=payment).amount_minor == 0
