"""The payout sweep, a client's dispute and a card chargeback racing on one payment at the
dispute window's last instant: the expert's share is either sent or held, never both.

Real threads on PostgreSQL. All three writers take the payment's row lock first; the test holds
that lock until PostgreSQL shows all three waiting on it, so they are inside their services
together, and lets them in in each of the six orders (PostgreSQL grants a row's waiters in the
order they queued), then once more in whatever order the scheduler picks.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from functools import partial

import pytest
import time_machine
from django.db.models import Q

from billing import services as billing
from billing.models import (
    CommandKind,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PayoutAccount,
    Settlement,
    WebhookEvent,
)
from moderation import services
from moderation.models import Dispute, DisputeSource, DisputeState
from moderation.tests.helpers import payment_of, seat_charged
from rooms.models import Seat
from rooms.tests.factories import CALL_START
from rooms.tests.races import lock_held_until_waited_on, queued_in_order, race

# `seat_charged` settles at CALL_START + 3 min; the window is 72 h from there.
SETTLED_AT = CALL_START + dt.timedelta(minutes=3)
DEADLINE = SETTLED_AT + dt.timedelta(hours=72)
CHARGED = 12000
EXPERT_SHARE = 10200  # 85 % of 120.00 EUR

PAYOUT, DISPUTE, CHARGEBACK = "payout", "dispute", "chargeback"


def _ready() -> tuple[Seat, dict[str, Callable[[], object]]]:
    """A charged seat whose expert can be paid, and the three writers, each at the window's
    last instant: the sweep one microsecond after it (its first moment of being due; its
    clock runs a hair ahead of this one), the client exactly at it (the last moment a dispute
    is allowed), the bank's chargeback event
    stored and about to be processed by a worker."""
    seat = seat_charged()
    payment = payment_of(seat)
    PayoutAccount.objects.create(
        user_id=payment.payee_id, provider="local", account_id="lacct_race", payouts_enabled=True
    )
    settlement = Settlement.objects.get(payment=payment)
    assert settlement.payout_due_at == DEADLINE
    assert (settlement.amount_minor, settlement.payout_minor) == (CHARGED, EXPERT_SHARE)
    event = WebhookEvent.objects.create(
        provider="local",
        event_id="evt_chargeback_race",
        type="charge.dispute.created",
        payload={
            "object": {
                "id": "dp_race",
                "payment_intent": payment.intent_id,
                "amount": CHARGED,
                "reason": "fraudulent",
            },
            "created": int(DEADLINE.timestamp()),
        },
    )
    writers: dict[str, Callable[[], object]] = {
        PAYOUT: partial(billing.payouts_due_create, now=DEADLINE + dt.timedelta(microseconds=1)),
        DISPUTE: partial(
            services.dispute_open,
            seat.pk,
            seat.client,
            reason="quality",
            text="The expert never turned the camera on.",
            # No `now`: the service reads the clock after the payment's lock, as the view
            # does; the race runs with the clock frozen at DEADLINE.
        ),
        CHARGEBACK: partial(billing.webhook_process, event.pk),
    }
    return seat, writers


def _payment_lock(seat: Seat) -> Callable[[], object]:
    return partial(Payment.objects.select_for_update().get, pk=seat.payment_id)


def _sent_xor_held(seat: Seat, *, transfer_first: bool) -> None:
    """The one invariant, and the exact records of each side of it."""
    payment = payment_of(seat)
    transfers = list(
        PaymentCommand.objects.filter(payment=payment, kind=CommandKind.TRANSFER).values_list(
            "amount_minor", "destination"
        )
    )
    held = Settlement.objects.get(payment=payment).payout_held
    # Both disputes are open whatever the order: the client's was in time, the bank's is the
    # bank's. Only the money differs.
    assert sorted(
        Dispute.objects.filter(seat=seat).values_list("source", "state", "charged_minor")
    ) == [
        (DisputeSource.CHARGEBACK, DisputeState.OPEN, CHARGED),
        (DisputeSource.CLIENT, DisputeState.OPEN, CHARGED),
    ]
    events = list(
        PaymentEvent.objects.filter(payment=payment)
        .filter(Q(kind__startswith="payout") | Q(kind="dispute_opened"))
        .values_list("kind", flat=True)
    )
    chargeback = Dispute.objects.get(seat=seat, source=DisputeSource.CHARGEBACK)
    if transfer_first:
        assert (transfers, held) == ([(EXPERT_SHARE, "lacct_race")], False)
        # Both holds came too late and say so in the payment's history; the chargeback's
        # dispute tells staff the share had left.
        assert sorted(events) == ["dispute_opened", "payout_hold_too_late", "payout_hold_too_late"]
        assert "payout of 102.00" in chargeback.text and "already been sent" in chargeback.text
    else:
        assert (transfers, held) == ([], True)
        # The first hold holds it; the second finds it held and writes nothing.
        assert sorted(events) == ["dispute_opened", "payout_held"]
        assert "already been sent" not in chargeback.text


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "order", list(itertools.permutations([PAYOUT, DISPUTE, CHARGEBACK])), ids="-".join
)
def test_payout_dispute_and_chargeback_at_the_last_instant_send_or_hold_never_both(
    order: tuple[str, str, str],
) -> None:
    seat, writers = _ready()

    with time_machine.travel(DEADLINE, tick=False):
        outcomes = queued_in_order(_payment_lock(seat), [writers[name] for name in order])

    assert outcomes.overlapped()
    assert outcomes == ["ok", "ok", "ok"]
    _sent_xor_held(seat, transfer_first=order[0] == PAYOUT)


@pytest.mark.django_db(transaction=True)
def test_payout_dispute_and_chargeback_released_together_send_or_hold_never_both() -> None:
    """The same race with no order imposed: whichever the scheduler lets in first decides."""
    seat, writers = _ready()

    with (
        time_machine.travel(DEADLINE, tick=False),
        lock_held_until_waited_on(_payment_lock(seat), waiters=3) as held,
    ):
        outcomes = race([writers[PAYOUT], writers[DISPUTE], writers[CHARGEBACK]])

    assert held.seen, f"the three never waited on the payment together ({held.most_waiting})"
    assert outcomes.overlapped()
    assert outcomes == ["ok", "ok", "ok"]
    transfer_first = PaymentCommand.objects.filter(
        payment=payment_of(seat), kind=CommandKind.TRANSFER
    ).exists()
    _sent_xor_held(seat, transfer_first=transfer_first)
