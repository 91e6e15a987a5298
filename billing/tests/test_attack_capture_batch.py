"""A sweep's batch of captures (`commands_execute`), attacked: one capture fails in the middle
of the batch, and one is captured at the provider by a worker that dies before recording it.
Each is captured exactly once, by the batch or by the outbox sweep after the lease."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine
from django.conf import settings

from billing import services
from billing.gateways.local import LocalGateway
from billing.models import (
    CommandKind,
    CommandState,
    LocalOperation,
    Payment,
    PaymentCommand,
    PaymentState,
)
from rooms.tests.factories import CALL_START, room_closed_after_a_call, seat_booked

pytestmark = pytest.mark.django_db


def _captures(count: int) -> list[PaymentCommand]:
    commands = []
    for _ in range(count):
        seat = seat_booked()
        room_closed_after_a_call(seat)
        assert seat.payment_id is not None
        commands.append(PaymentCommand.objects.get(payment_id=seat.payment_id))
    assert {c.kind for c in commands} == {CommandKind.CAPTURE}
    return commands


def _capture_failing_for(
    monkeypatch: pytest.MonkeyPatch, command: PaymentCommand, *, after_sending: bool
) -> None:
    real = LocalGateway.intent_capture
    intent_id = Payment.objects.get(pk=command.payment_id).intent_id

    def capture(self: LocalGateway, intent: str, **kwargs: Any) -> Any:
        if intent != intent_id:
            return real(self, intent, **kwargs)
        if after_sending:
            real(self, intent, **kwargs)  # captured; the worker dies before it hears back
        raise RuntimeError("the worker died")

    monkeypatch.setattr(LocalGateway, "intent_capture", capture)


@pytest.mark.parametrize("after_sending", [False, True])
def test_a_capture_that_fails_in_a_batch_is_captured_once_by_the_sweep_after_its_lease(
    monkeypatch: pytest.MonkeyPatch, after_sending: bool
) -> None:
    first, broken, last = _captures(3)
    at = CALL_START + dt.timedelta(minutes=5)
    with time_machine.travel(at, tick=False):
        _capture_failing_for(monkeypatch, broken, after_sending=after_sending)
        done = services.commands_execute([first.pk, broken.pk, last.pk])
        assert done == {CommandState.SUCCEEDED: 2, "error": 1}
        # Leased: the sweep leaves it to the worker that may still be sending it.
        assert services.commands_due_ids() == []
    monkeypatch.undo()
    lease = dt.timedelta(seconds=settings.PAYMENT_COMMAND_LEASE_SECONDS + 1)
    with time_machine.travel(at + lease, tick=False):
        assert services.commands_due_ids() == [broken.pk]
        assert services.command_execute(broken.pk) == CommandState.SUCCEEDED
        assert services.commands_due_ids() == []
    for command in (first, broken, last):
        payment = Payment.objects.get(pk=command.payment_id)
        assert (payment.state, payment.captured_minor) == (PaymentState.CAPTURED, 12000)
        captures = LocalOperation.objects.filter(intent_id=payment.intent_id)
        assert captures.filter(operation="intent_capture").count() == 1
