"""One payment's webhook events processed by two workers at once, while its capture command is
being sent: the end state is the one in-order delivery gives.

The story: a capture went out and the provider took it, but the worker died before recording
the answer. The retry sweep sends the command again (same idempotency key, so the provider
replays its answer) while the provider's `payment_intent.succeeded` is delivered twice and
taken by two workers, and a late `amount_capturable_updated` (the authorization, sent before the
capture) is taken by a third. Real threads on PostgreSQL; each writer meets the others on the
payment's row lock (the duplicate on the event's), and the test holds the payment until
PostgreSQL shows all four waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest

from accounts.tests.factories import UserFactory
from billing import services
from billing.gateways.local import TEST_CARD, LocalGateway
from billing.models import (
    CommandKind,
    CommandState,
    LocalIntent,
    Payment,
    PaymentCommand,
    PaymentEvent,
    WebhookEvent,
)
from billing.tasks import command_execute_task
from rooms.tests.races import lock_held_until_waited_on, queued_in_order, race

HOLD = 12000


@pytest.fixture(autouse=True)
def _the_worker_that_sends_commands_is_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Commands are not sent on commit (the eager test worker would): the racers send them."""
    monkeypatch.setattr(command_execute_task, "delay", lambda *args, **kwargs: None)


CAPTURED = 4500  # a per-minute call that used part of its hold


def _captured_at_the_provider_answer_lost() -> tuple[Payment, dict[str, Any]]:
    """An authorized payment settled for part of its hold, whose capture the provider has
    already made; and the racers: the command's retry and the three webhook deliveries."""
    payment = services.payment_open(
        payer=UserFactory.create(),
        payee=UserFactory.create(),
        amount_minor=HOLD,
        currency="EUR",
        description="Per-minute call",
    )
    payment = services.payment_local_card(payment.pk, card_number=TEST_CARD)
    services.payment_settle(
        payment,
        amount_minor=CAPTURED,
        currency="EUR",
        rule="per_minute",
        inputs={"billable_seconds": 262},
        explanation="262 s connected = 5 started min × 900 = 4500 → 4500.",
    )
    command = PaymentCommand.objects.get(payment=payment, kind=CommandKind.CAPTURE)
    # The first attempt reached the provider; its answer never came back.
    LocalGateway().intent_capture(
        payment.intent_id, amount_minor=CAPTURED, idempotency_key=command.idempotency_key
    )
    intent = {
        "id": payment.intent_id,
        "object": "payment_intent",
        "amount": HOLD,
        "currency": "eur",
        "metadata": {"payment": str(payment.pk)},
    }
    authorized = _stored(
        f"evt_{payment.pk}_auth",
        "payment_intent.amount_capturable_updated",
        {**intent, "status": "requires_capture", "amount_received": 0},
    )
    succeeded = _stored(
        f"evt_{payment.pk}_succeeded",
        "payment_intent.succeeded",
        {
            **intent,
            "status": "succeeded",
            "amount_received": CAPTURED,
            "latest_charge": f"lch_{payment.intent_id.removeprefix('lpi_')}",
        },
    )
    racers = {
        "command": partial(services.command_execute, command.pk),
        "succeeded_worker_1": partial(services.webhook_process, succeeded.pk),
        "succeeded_worker_2": partial(services.webhook_process, succeeded.pk),
        "authorized_late": partial(services.webhook_process, authorized.pk),
    }
    return payment, racers


def _stored(event_id: str, kind: str, obj: dict[str, Any]) -> WebhookEvent:
    return WebhookEvent.objects.create(
        provider="local",
        event_id=event_id,
        type=kind,
        payload={"object": obj, "created": 1_764_576_000},
    )


def _end_state(payment: Payment) -> dict[str, Any]:
    """Everything the racers may write, without ids and times."""
    payment.refresh_from_db()
    intent = LocalIntent.objects.get(id=payment.intent_id)
    return {
        "payment": (
            payment.state,
            payment.authorized_minor,
            payment.captured_minor,
            payment.released_minor,
            payment.refunded_minor,
            payment.charge_id.removeprefix(f"lch_{payment.intent_id.removeprefix('lpi_')}"),
        ),
        "commands": list(
            PaymentCommand.objects.filter(payment=payment).values_list(
                "kind", "state", "amount_minor"
            )
        ),
        "events": sorted(
            PaymentEvent.objects.filter(payment=payment).values_list("kind", "amount_minor")
        ),
        "webhooks": sorted(
            (event.event_id.split("_")[-1], event.processed_at is not None, event.attempts)
            for event in WebhookEvent.objects.filter(event_id__startswith=f"evt_{payment.pk}_")
        ),
        "provider": (intent.status, intent.captured_minor),
    }


def _in_order_end_state() -> dict[str, Any]:
    payment, racers = _captured_at_the_provider_answer_lost()
    for name in ("authorized_late", "command", "succeeded_worker_1", "succeeded_worker_2"):
        racers[name]()
    return _end_state(payment)


EXPECTED = {
    "payment": ("captured", HOLD, CAPTURED, HOLD - CAPTURED, 0, ""),
    "commands": [(CommandKind.CAPTURE, CommandState.SUCCEEDED, CAPTURED)],
    "provider": ("succeeded", CAPTURED),
}


def _lock(payment: Payment) -> Callable[[], object]:
    return partial(Payment.objects.select_for_update().get, pk=payment.pk)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "order",
    [
        ("command", "succeeded_worker_1", "succeeded_worker_2", "authorized_late"),
        ("succeeded_worker_1", "succeeded_worker_2", "command", "authorized_late"),
        ("authorized_late", "succeeded_worker_1", "command", "succeeded_worker_2"),
        ("succeeded_worker_1", "authorized_late", "succeeded_worker_2", "command"),
    ],
    ids=lambda order: "-".join(name.split("_")[0] for name in order),
)
def test_webhooks_on_two_workers_and_the_capture_end_as_in_order_delivery(
    order: tuple[str, ...],
) -> None:
    in_order = _in_order_end_state()
    payment, racers = _captured_at_the_provider_answer_lost()

    outcomes = queued_in_order(_lock(payment), [racers[name] for name in order])

    assert outcomes.overlapped()
    assert outcomes == ["ok"] * 4
    raced = _end_state(payment)
    assert raced == in_order
    assert {key: raced[key] for key in EXPECTED} == EXPECTED


@pytest.mark.django_db(transaction=True)
def test_webhooks_on_two_workers_and_the_capture_released_together_end_as_in_order() -> None:
    in_order = _in_order_end_state()
    payment, racers = _captured_at_the_provider_answer_lost()

    with lock_held_until_waited_on(_lock(payment), waiters=4) as held:
        outcomes = race(list(racers.values()))

    assert held.seen, f"the four never waited together ({held.most_waiting} seen)"
    assert outcomes.overlapped()
    assert outcomes == ["ok"] * 4
    assert _end_state(payment) == in_order
