"""The 72 h payout delay at its exact instant: no transfer at the moment the window ends (it
still belongs to the client's dispute), one transfer a microsecond after, of the expert's exact
share, created at that moment."""

from __future__ import annotations

import datetime as dt

import pytest
import time_machine

from accounts.tests.factories import UserFactory
from billing import services
from billing.gateways.local import TEST_CARD
from billing.models import CommandKind, CommandState, PaymentCommand, PayoutAccount, Settlement
from billing.tests.helpers import commands_run_pending

pytestmark = pytest.mark.django_db

SETTLED_AT = dt.datetime(2026, 12, 1, 15, 0, tzinfo=dt.UTC)
DUE = SETTLED_AT + dt.timedelta(hours=72)
US = dt.timedelta(microseconds=1)


@pytest.fixture
def settlement() -> Settlement:
    with time_machine.travel(SETTLED_AT, tick=False):
        payment = services.payment_open(
            payer=UserFactory.create(),
            payee=UserFactory.create(),
            amount_minor=12000,
            currency="EUR",
            description="Architecture review",
        )
        services.payment_local_card(payment.pk, card_number=TEST_CARD)
        made = services.payment_settle(
            payment,
            amount_minor=9999,
            currency="EUR",
            rule="per_minute",
            inputs={"billable_seconds": 1800},
            explanation="an amount whose 15 % is not whole",
        )
        assert commands_run_pending() == [CommandState.SUCCEEDED]
    PayoutAccount.objects.create(
        user_id=payment.payee_id, provider="local", account_id="lacct_due", payouts_enabled=True
    )
    return made


def test_a_settlement_is_due_for_payout_exactly_72_hours_after_it(settlement: Settlement) -> None:
    assert settlement.created_at == SETTLED_AT
    assert settlement.payout_due_at == DUE
    # 15 % of 99.99 EUR is 14.9985: the platform's fee, in whole cents, and the expert's rest
    # always add up to the amount.
    assert (settlement.platform_fee_minor, settlement.payout_minor) == (1500, 8499)


def test_no_transfer_at_the_windows_last_instant(settlement: Settlement) -> None:
    with time_machine.travel(DUE, tick=False):
        assert services.payouts_due_create() == 0
    assert services.payouts_due_create(now=DUE - US) == 0
    assert not PaymentCommand.objects.filter(kind=CommandKind.TRANSFER).exists()


def test_one_transfer_of_the_experts_share_a_microsecond_after_the_window(
    settlement: Settlement,
) -> None:
    with time_machine.travel(DUE + US, tick=False):
        assert services.payouts_due_create() == 1
        assert services.payouts_due_create() == 0
    transfer = PaymentCommand.objects.get(kind=CommandKind.TRANSFER)
    assert (
        transfer.payment_id,
        transfer.amount_minor,
        transfer.destination,
        transfer.state,
        transfer.created_at,
    ) == (settlement.payment_id, 8499, "lacct_due", CommandState.PENDING, DUE + US)
