"""Issue 16 C: the local provider answers a repeated idempotency key like Stripe does, even
when the repeats arrive at once: the first request's answer, never an IntegrityError.

Overlap is proven, not hoped for: the local provider's operation log is locked against inserts
until PostgreSQL shows every racer waiting, so all of them are inside the provider together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing import services
from billing.gateways.base import Intent
from billing.gateways.local import TEST_CARD, LocalGateway
from billing.models import LocalIntent, LocalOperation, Payment, PaymentState
from rooms.tests.races import lock_held_until_waited_on

AMOUNT = 12000
RACERS = 4


def _lock_operations() -> None:
    """Nobody can write to the local provider's operation log until this transaction ends."""
    with connection.cursor() as cursor:
        cursor.execute("LOCK TABLE billing_localoperation IN SHARE MODE")


def _in_threads(actions: list[Callable[[], object]]) -> Callable[[], list[object]]:
    """Start each action in a thread of its own (its own connection); returns "join them and
    give me their results" (a result, or the exception it raised)."""
    results: list[object] = [None] * len(actions)

    def run(index: int) -> None:
        try:
            results[index] = actions[index]()
        except Exception as error:  # the test shows any crash
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(actions))]
    for thread in threads:
        thread.start()

    def join() -> list[object]:
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
        return results

    return join


@pytest.mark.django_db(transaction=True)
def test_one_idempotency_key_sent_four_times_at_once_creates_one_intent_and_replays_it() -> None:
    def create() -> Intent:
        return LocalGateway().intent_create(
            amount_minor=AMOUNT, currency="EUR", metadata={}, idempotency_key="k-once"
        )

    with lock_held_until_waited_on(_lock_operations, RACERS) as held:
        started = _in_threads([create] * RACERS)
    results = started()

    assert held.seen, "the racers were never all waiting at once: they did not overlap"
    assert all(isinstance(result, Intent) for result in results), results
    intents = {result.id for result in results if isinstance(result, Intent)}
    assert len(intents) == 1
    row = LocalIntent.objects.get()
    assert (row.id, row.amount_minor, row.currency) == (intents.pop(), AMOUNT, "EUR")
    assert list(LocalOperation.objects.values_list("operation", "amount_minor")) == [
        ("intent_create", AMOUNT)
    ]


@pytest.mark.django_db(transaction=True)
def test_the_card_form_submitted_four_times_at_once_authorizes_once_and_answers_each() -> None:
    payer: User = UserFactory.create()
    payment = services.payment_open(
        payer=payer,
        payee=UserFactory.create(),
        amount_minor=AMOUNT,
        currency="EUR",
        description="Architecture review",
    )
    url = reverse("billing:pay", args=[payment.pk]) + "?next=/sessions/"
    form = {"number": TEST_CARD, "expiry": "12/34", "cvc": "123"}

    def submit() -> tuple[int, str]:
        browser = Client(raise_request_exception=False)
        browser.force_login(payer)
        response = browser.post(url, form)
        return response.status_code, response.headers.get("Location", "")

    with lock_held_until_waited_on(_lock_operations, RACERS) as held:
        started = _in_threads([submit] * RACERS)
    answers = started()

    assert held.seen, "the submissions were never all waiting at once: they did not overlap"
    # Every submission is told the card is paid and goes on; none sees an error page.
    assert answers == [(302, "/sessions/")] * RACERS
    payment.refresh_from_db()
    assert (payment.state, payment.authorized_minor, payment.captured_minor) == (
        PaymentState.AUTHORIZED,
        AMOUNT,
        0,
    )
    assert LocalIntent.objects.get().status == "requires_capture"
    assert list(
        LocalOperation.objects.filter(outcome="authorized").values_list("amount_minor", flat=True)
    ) == [AMOUNT]
    assert list(
        payment.events.filter(kind="authorized").values_list("amount_minor", flat=True)
    ) == [AMOUNT]
    assert Payment.objects.count() == 1
