"""Issue 16 B: no hold may stay on a client's card for a payment nobody wants any more.

The race: a reservation expires (the payment is released) while the card step is creating the
provider's intent. The release holds the payment's row lock; the card step's write of the
intent id waits on it, and must then see the release. The tests hold the release's
transaction open until PostgreSQL shows the card step waiting on the payment, so the two
sides provably overlap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import stripe
from django.db import connection, transaction
from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing import services
from billing.errors import BillingError
from billing.gateways import gateway_for
from billing.gateways.local import TEST_CARD, LocalGateway
from billing.models import (
    CommandKind,
    CommandState,
    LocalIntent,
    Payment,
    PaymentCommand,
    PaymentState,
    Settlement,
)
from billing.tests.helpers import commands_run_pending
from billing.tests.localstripe import browser_confirms

AMOUNT = 12000


def _payment_open() -> Payment:
    payer: User = UserFactory.create()
    payee: User = UserFactory.create()
    payment = services.payment_open(
        payer=payer,
        payee=payee,
        amount_minor=AMOUNT,
        currency="EUR",
        description="Architecture review",
    )
    # The customer exists already (an earlier visit of the pay page), so the first write of
    # the card step that needs the payment's row is the one that records the intent.
    customer = gateway_for(payment.provider).customer_create(
        email=payer.email, idempotency_key=f"test-{payment.pk}-customer"
    )
    Payment.objects.filter(pk=payment.pk).update(customer_id=customer)
    payment.refresh_from_db()
    return payment


def _waiting_on_payment() -> int:
    """Sessions of this database waiting on a lock while touching billing_payment."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query ILIKE %s",
            ["%billing_payment%"],
        )
        row = cursor.fetchone()
        assert row is not None
        return int(row[0])


def _release_while(payment: Payment, card_step: Callable[[], object]) -> tuple[str, bool]:
    """Expire the payment (its release, in a transaction holding the payment's lock) while
    `card_step` runs in another thread; commit only once the card step waits on the payment.
    Returns the card step's outcome and whether it was seen waiting."""
    outcome: list[str] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            card_step()
            outcome.append("ok")
        except BillingError as error:
            outcome.append(f"refused: {error}")
        except Exception as error:  # a crash is a finding the assertion must show
            outcome.append(f"crashed: {error!r}")
        finally:
            connection.close()

    racer = threading.Thread(target=run)
    seen = False
    with transaction.atomic():
        services.payments_lock([payment.pk])
        services.payment_release(payment, reason="the reservation expired unpaid")
        racer.start()
        assert started.wait(10)
        for _ in range(2000):  # 20 s at most
            if _waiting_on_payment() >= 1:
                seen = True
                break
            time.sleep(0.01)
    racer.join(timeout=60)
    assert not racer.is_alive()
    return outcome[0], seen


def _assert_released_and_hold_canceled(payment: Payment, provider_status: Callable[[str], str]):  # type: ignore[no-untyped-def]
    payment.refresh_from_db()
    settlement = Settlement.objects.get(payment=payment)
    assert (settlement.rule, settlement.amount_minor, settlement.payout_minor) == ("released", 0, 0)
    assert payment.state == PaymentState.CANCELED
    assert payment.captured_minor == 0
    assert payment.intent_id != ""
    cancel = PaymentCommand.objects.get(payment=payment)
    assert (cancel.kind, cancel.amount_minor, cancel.state) == (
        CommandKind.CANCEL,
        0,
        CommandState.SUCCEEDED,
    )
    assert provider_status(payment.intent_id) == "canceled"


@pytest.mark.django_db(transaction=True)
def test_a_reservation_expiring_while_the_local_card_form_runs_leaves_no_hold() -> None:
    payment = _payment_open()

    outcome, seen = _release_while(
        payment, lambda: services.payment_local_card(payment.pk, card_number=TEST_CARD)
    )

    assert seen, "the card step never waited on the payment: the sides did not overlap"
    assert outcome.startswith("refused: This booking is no longer waiting for payment"), outcome
    commands_run_pending()  # the worker (eager in tests: already ran after commit)
    _assert_released_and_hold_canceled(
        payment, lambda intent_id: LocalGateway().intent_retrieve(intent_id).status
    )
    # The intent was never confirmed: no money was ever held.
    payment.refresh_from_db()
    assert (payment.authorized_minor, payment.released_minor) == (0, 0)
    assert LocalIntent.objects.get(pk=payment.intent_id).amount_minor == AMOUNT


@pytest.mark.django_db(transaction=True)
def test_a_reservation_expiring_while_stripe_creates_the_intent_leaves_no_hold(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _payment_open()
    assert payment.provider == "stripe"

    def card_step() -> None:
        # The pay page creates the intent, then the browser confirms it and comes back.
        services.payment_checkout(payment.pk)
        payment.refresh_from_db()
        browser_confirms(stripe_api, payment.intent_id)
        services.payment_sync(payment.pk, source="browser_return")

    outcome, seen = _release_while(payment, card_step)

    assert seen, "the card step never waited on the payment: the sides did not overlap"
    assert outcome.startswith("refused: This booking is no longer waiting for payment"), outcome
    commands_run_pending()  # the worker (eager in tests: already ran after commit)
    _assert_released_and_hold_canceled(
        payment, lambda intent_id: str(stripe_api.v1.payment_intents.retrieve(intent_id).status)
    )
    payment.refresh_from_db()
    assert (payment.authorized_minor, payment.released_minor) == (0, 0)


def _ended_with_intent_recorded() -> Payment:
    """What the race used to leave behind: the payment released (no settlement-side cancel,
    since no intent was known), and the intent id written onto it afterwards."""
    payment = _payment_open()
    services.payment_checkout(payment.pk)
    payment.refresh_from_db()
    assert payment.intent_id
    Payment.objects.filter(pk=payment.pk).update(
        state=PaymentState.CANCELED, updated_at=timezone.now()
    )
    payment.refresh_from_db()
    assert not payment.commands.exists()
    return payment


@pytest.mark.django_db(transaction=True)
def test_a_late_authorization_of_a_recorded_intent_is_canceled_at_the_local_provider() -> None:
    payment = _ended_with_intent_recorded()

    intent = LocalGateway().intent_confirm_card(payment.intent_id, card_number=TEST_CARD)
    assert intent.status == "requires_capture"
    services.payment_apply_intent(payment.pk, intent, source="card_form")

    payment.refresh_from_db()
    assert (payment.state, payment.authorized_minor, payment.released_minor) == (
        PaymentState.CANCELED,
        AMOUNT,
        AMOUNT,
    )
    assert payment.captured_minor == 0
    cancel = PaymentCommand.objects.get(payment=payment)
    assert (cancel.kind, cancel.amount_minor, cancel.state) == (
        CommandKind.CANCEL,
        0,
        CommandState.SUCCEEDED,
    )
    commands_run_pending()  # the worker (eager in tests: already ran after commit)
    assert LocalGateway().intent_retrieve(payment.intent_id).status == "canceled"
    # Heard again (a retry, a webhook): still one cancel.
    services.payment_apply_intent(payment.pk, intent, source="card_form")
    assert PaymentCommand.objects.filter(payment=payment).count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_late_authorization_of_a_recorded_intent_is_canceled_at_stripe(
    stripe_api: stripe.StripeClient,
) -> None:
    payment = _ended_with_intent_recorded()

    browser_confirms(stripe_api, payment.intent_id)
    services.payment_sync(payment.pk, source="webhook")

    payment.refresh_from_db()
    assert (payment.state, payment.authorized_minor, payment.released_minor) == (
        PaymentState.CANCELED,
        AMOUNT,
        AMOUNT,
    )
    assert payment.captured_minor == 0
    commands_run_pending()  # the worker (eager in tests: already ran after commit)
    cancel = PaymentCommand.objects.get(payment=payment)
    assert (cancel.kind, cancel.amount_minor, cancel.state) == (
        CommandKind.CANCEL,
        0,
        CommandState.SUCCEEDED,
    )
    assert stripe_api.v1.payment_intents.retrieve(payment.intent_id).status == "canceled"
