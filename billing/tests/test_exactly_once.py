"""One capture command, many workers: the provider captures once and Parley records it once.

Each worker is a real OS process (billing/tests/once_worker.py) with its own connection to the
test database, started at the same moment through a file barrier; another worker is killed
between sending the capture and recording its answer. Both providers: the built-in one (its
ledger, LocalOperation, is the provider's own record) and Stripe as played by localstripe
(which answers a repeated capture with a 400 instead of replaying it, so the service has to
reconcile by retrieving the PaymentIntent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import stripe
from django.db import connection
from django.utils import timezone
from pytest_django import Settings

import billing.tasks
from accounts.tests.factories import UserFactory
from billing import services
from billing.gateways.local import TEST_CARD, LocalGateway
from billing.gateways.stripe import StripeGateway
from billing.models import (
    CommandKind,
    CommandState,
    LocalIntent,
    LocalOperation,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
)
from billing.tests.localstripe import browser_confirms
from billing.tests.once_worker import KILLED_EXIT_STATUS

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
HOLD = 3000
# Several payments raced in turn by the same two workers: one close race is luck, four are not.
ROUNDS = 4
# The dead worker's lease: long enough to see it hold, short enough to wait out.
LEASE_SECONDS = 4
WORKER_TIMEOUT_SECONDS = 120


# --- Running workers ----------------------------------------------------------------------------


class _Outbox:
    """Stands in for the Celery task: the command is queued, but no worker in this process
    runs it (the workers under test are the other processes)."""

    def __init__(self) -> None:
        self.ids: list[int] = []

    def delay(self, command_id: int) -> None:
        self.ids.append(command_id)


@pytest.fixture
def outbox(monkeypatch: pytest.MonkeyPatch) -> _Outbox:
    queued = _Outbox()
    monkeypatch.setattr(billing.tasks, "command_execute_task", queued)
    return queued


@dataclass(frozen=True)
class WorkerRun:
    name: str
    returncode: int
    results: list[dict[str, Any]]
    stderr: str


def _test_database_url() -> str:
    """The database this test runs in (test_…), for the workers to connect to."""
    db = connection.settings_dict
    assert str(db["NAME"]).startswith("test_"), db["NAME"]
    user = urllib.parse.quote(str(db["USER"]), safe="")
    password = urllib.parse.quote(str(db["PASSWORD"]), safe="")
    return f"postgres://{user}:{password}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=_test_database_url(),
        DJANGO_SETTINGS_MODULE="config.settings",
        # Nothing a worker does may reach a real broker.
        CELERY_TASK_ALWAYS_EAGER="1",
        PAYMENT_PROVIDER=settings.PAYMENT_PROVIDER,
        STRIPE_SECRET_KEY=settings.STRIPE_SECRET_KEY or "",
        STRIPE_API_BASE=settings.STRIPE_API_BASE or "",
        STRIPE_WEBHOOK_SECRET=settings.STRIPE_WEBHOOK_SECRET or "",
        PYTHONPATH=str(ROOT),
    )
    env.update(extra)
    return env


def _run_workers(
    tmp_path: Path,
    names: list[str],
    command_ids: list[int],
    env: dict[str, str],
    *,
    die_after_send: bool = False,
) -> list[WorkerRun]:
    """Start one process per name; each runs every command, all meeting at a barrier first."""
    barrier = tmp_path / "barrier"
    barrier.mkdir(exist_ok=True)
    for stale in barrier.iterdir():
        stale.unlink()
    processes = {
        name: subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "billing.tests.once_worker",
                "--name",
                name,
                "--commands",
                ",".join(str(pk) for pk in command_ids),
                "--barrier",
                str(barrier),
                "--parties",
                str(len(names)),
                "--log",
                str(tmp_path / "sends.jsonl"),
                *(["--die-after-send"] if die_after_send else []),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    runs = []
    for name, process in processes.items():
        try:
            out, err = process.communicate(timeout=WORKER_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        lines = out.strip().splitlines()
        results = json.loads(lines[-1]) if process.returncode == 0 and lines else []
        runs.append(WorkerRun(name, process.returncode, results, err))
    return runs


def _sends(tmp_path: Path, intent_id: str) -> list[dict[str, Any]]:
    """The capture requests the workers sent for one intent, with the provider's answer."""
    log = tmp_path / "sends.jsonl"
    if not log.exists():
        return []
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return [record for record in records if record.get("intent") == intent_id]


def _assert_ran(runs: list[WorkerRun]) -> None:
    for run in runs:
        assert run.returncode == 0, f"worker {run.name} failed:\n{run.stderr[-3000:]}"


# --- Payments waiting for their capture -------------------------------------------------------


def _payment_open() -> Payment:
    return services.payment_open(
        payer=UserFactory.create(),
        payee=UserFactory.create(),
        amount_minor=HOLD,
        currency="EUR",
        description="Kubernetes cost review",
    )


def _local_authorized() -> Payment:
    payment = services.payment_local_card(_payment_open().pk, card_number=TEST_CARD)
    assert payment.state == PaymentState.AUTHORIZED
    return payment


def _stripe_authorized(api: stripe.StripeClient) -> Payment:
    payment = _payment_open()
    services.payment_checkout(payment.pk)
    payment.refresh_from_db()
    browser_confirms(api, payment.intent_id)
    payment = services.payment_sync(payment.pk, source="browser_return")
    assert payment.state == PaymentState.AUTHORIZED
    return payment


def _capture_decided(payment: Payment, amount_minor: int, outbox: _Outbox) -> PaymentCommand:
    services.payment_settle(
        payment,
        amount_minor=amount_minor,
        currency="EUR",
        rule="metered",
        inputs={"seconds": amount_minor},
        explanation="Charged for the minutes of the call.",
    )
    command = PaymentCommand.objects.get(payment=payment, kind=CommandKind.CAPTURE)
    assert outbox.ids[-1] == command.pk  # queued after commit, and run by nobody here
    assert command.state == CommandState.PENDING
    return command


# --- What the provider did ---------------------------------------------------------------------


def _local_captures(intent_id: str) -> list[LocalOperation]:
    return list(LocalOperation.objects.filter(intent_id=intent_id, operation="intent_capture"))


@dataclass(frozen=True)
class StripeCharge:
    status: str
    captured: bool
    amount: int
    # A capture for less than the hold gives the rest back as one refund on the charge, so a
    # second capture would show as a second refund (localstripe's balance history, the
    # other witness, cannot be listed: it answers 500).
    refunds: list[int]


def _stripe_charge(api: stripe.StripeClient, intent_id: str) -> StripeCharge:
    intent = api.v1.payment_intents.retrieve(intent_id)
    # localstripe expands latest_charge; Stripe gives its id.
    latest = intent.latest_charge
    assert latest is not None
    charge_id = latest if isinstance(latest, str) else str(latest.id)
    charge = api.v1.charges.retrieve(charge_id).to_dict()
    return StripeCharge(
        status=str(intent.status),
        captured=bool(charge["captured"]),
        amount=int(charge["amount"]),
        refunds=[int(refund["amount"]) for refund in charge["refunds"]["data"]],
    )


# --- What Parley recorded ----------------------------------------------------------------------


def _assert_recorded_once(command: PaymentCommand, amount_minor: int, attempts: int) -> None:
    command.refresh_from_db()
    payment = Payment.objects.get(pk=command.payment_id)
    assert (command.state, command.attempts, command.leased_until) == (
        CommandState.SUCCEEDED,
        attempts,
        None,
    )
    assert command.provider_ref == payment.intent_id
    assert payment.state == PaymentState.CAPTURED
    assert (
        payment.authorized_minor,
        payment.captured_minor,
        payment.released_minor,
        payment.refunded_minor,
    ) == (HOLD, amount_minor, HOLD - amount_minor, 0)
    captured_events = PaymentEvent.objects.filter(payment=payment, kind=PaymentState.CAPTURED)
    assert [event.amount_minor for event in captured_events] == [amount_minor]
    assert PaymentEvent.objects.filter(payment=payment, kind="capture_requested").count() == 1
    assert PaymentEvent.objects.filter(payment=payment, kind="capture_failed").count() == 0


@dataclass
class _InProcessSends:
    """Capture requests sent by this (the test's) process."""

    calls: list[str]


@pytest.fixture
def in_process_sends(monkeypatch: pytest.MonkeyPatch) -> _InProcessSends:
    sends = _InProcessSends(calls=[])
    for gateway_class in (LocalGateway, StripeGateway):
        original = gateway_class.intent_capture

        def recorded(self: Any, intent_id: str, *, _original: Any = original, **kw: Any) -> Any:
            sends.calls.append(intent_id)
            return _original(self, intent_id, **kw)

        monkeypatch.setattr(gateway_class, "intent_capture", recorded)
    return sends


# --- Two workers at once -----------------------------------------------------------------------


def _assert_one_worker_sent(tmp_path: Path, runs: list[WorkerRun], command: PaymentCommand) -> None:
    payment = Payment.objects.get(pk=command.payment_id)
    sends = _sends(tmp_path, payment.intent_id)
    # The lease lets one worker send; the other finds it taken (or the command done).
    assert [send["answer"] for send in sends] == ["captured"], sends
    assert sends[0]["key"] == command.idempotency_key
    states = sorted(
        result["state"] for run in runs for result in run.results if result["command"] == command.pk
    )
    assert len(states) == 2
    assert CommandState.SUCCEEDED in states
    assert set(states) <= {CommandState.SUCCEEDED, CommandState.PENDING}


def test_capture_run_by_two_workers_at_once_captures_once_at_the_local_provider(
    settings: Settings, tmp_path: Path, outbox: _Outbox
) -> None:
    settings.PAYMENT_PROVIDER = "local"
    commands = [_capture_decided(_local_authorized(), 1800 + i, outbox) for i in range(ROUNDS)]

    runs = _run_workers(
        tmp_path, ["w1", "w2"], [command.pk for command in commands], _worker_env(settings)
    )

    _assert_ran(runs)
    for i, command in enumerate(commands):
        amount = 1800 + i
        payment = Payment.objects.get(pk=command.payment_id)
        captures = _local_captures(payment.intent_id)
        assert [(op.amount_minor, op.idempotency_key) for op in captures] == [
            (amount, command.idempotency_key)
        ]
        intent = LocalIntent.objects.get(pk=payment.intent_id)
        assert (intent.status, intent.captured_minor) == ("succeeded", amount)
        _assert_one_worker_sent(tmp_path, runs, command)
        _assert_recorded_once(command, amount, attempts=1)


def test_capture_run_by_two_workers_at_once_captures_once_at_stripe(
    stripe_settings: Settings,
    stripe_api: stripe.StripeClient,
    tmp_path: Path,
    outbox: _Outbox,
) -> None:
    commands = [
        _capture_decided(_stripe_authorized(stripe_api), 1800 + i, outbox) for i in range(ROUNDS)
    ]

    runs = _run_workers(
        tmp_path, ["w1", "w2"], [command.pk for command in commands], _worker_env(stripe_settings)
    )

    _assert_ran(runs)
    for i, command in enumerate(commands):
        amount = 1800 + i
        payment = Payment.objects.get(pk=command.payment_id)
        charge = _stripe_charge(stripe_api, payment.intent_id)
        # Captured once, for the settled amount: the uncaptured rest shows as refunded.
        assert charge == StripeCharge(
            status="succeeded", captured=True, amount=HOLD, refunds=[HOLD - amount]
        )
        _assert_one_worker_sent(tmp_path, runs, command)
        _assert_recorded_once(command, amount, attempts=1)


# --- A worker killed between sending and recording ---------------------------------------------


def _kill_a_worker_after_it_sends(
    settings: Settings, tmp_path: Path, command: PaymentCommand, in_process: _InProcessSends
) -> Payment:
    """The first worker sends the capture and dies before recording; returns the payment as
    the dead worker left it, after checking that its lease keeps others off until it lapses."""
    env = _worker_env(settings, PAYMENT_COMMAND_LEASE_SECONDS=str(LEASE_SECONDS))
    [dead] = _run_workers(tmp_path, ["doomed"], [command.pk], env, die_after_send=True)
    assert dead.returncode == KILLED_EXIT_STATUS, dead.stderr[-3000:]

    payment = Payment.objects.get(pk=command.payment_id)
    sends = _sends(tmp_path, payment.intent_id)
    assert [(s["worker"], s["answer"]) for s in sends] == [("doomed", "captured")], sends
    # Sent, not recorded.
    command.refresh_from_db()
    assert (command.state, command.attempts) == (CommandState.PENDING, 1)
    assert command.leased_until is not None
    assert payment.state == PaymentState.AUTHORIZED
    assert payment.captured_minor == 0
    assert not PaymentEvent.objects.filter(payment=payment, kind=PaymentState.CAPTURED).exists()

    # While the dead worker's lease runs, nobody else sends.
    assert command.leased_until > timezone.now(), "the check below needs a lease still running"
    assert command.pk not in services.commands_due_ids()
    assert services.command_execute(command.pk) == CommandState.PENDING
    assert in_process.calls == []

    # Then it lapses, and the sweep picks the command up again.
    time.sleep(max(0.0, (command.leased_until - timezone.now()).total_seconds()) + 0.2)
    assert command.pk in services.commands_due_ids()
    return payment


def test_worker_killed_after_sending_a_capture_leaves_one_capture_at_the_local_provider(
    settings: Settings, tmp_path: Path, outbox: _Outbox, in_process_sends: _InProcessSends
) -> None:
    settings.PAYMENT_PROVIDER = "local"
    command = _capture_decided(_local_authorized(), 2100, outbox)

    payment = _kill_a_worker_after_it_sends(settings, tmp_path, command, in_process_sends)
    assert len(_local_captures(payment.intent_id)) == 1  # the dead worker's capture happened

    runs = _run_workers(tmp_path, ["w2"], [command.pk], _worker_env(settings))

    _assert_ran(runs)
    assert [result["state"] for result in runs[0].results] == [CommandState.SUCCEEDED]
    sends = _sends(tmp_path, payment.intent_id)
    # The second worker repeated the very same request; the provider replayed its answer.
    assert [(s["worker"], s["answer"], s["key"]) for s in sends] == [
        ("doomed", "captured", command.idempotency_key),
        ("w2", "captured", command.idempotency_key),
    ]
    assert [(op.amount_minor, op.idempotency_key) for op in _local_captures(payment.intent_id)] == [
        (2100, command.idempotency_key)
    ]
    intent = LocalIntent.objects.get(pk=payment.intent_id)
    assert (intent.status, intent.captured_minor) == ("succeeded", 2100)
    _assert_recorded_once(command, 2100, attempts=2)


def test_worker_killed_after_sending_a_capture_leaves_one_capture_at_stripe(
    stripe_settings: Settings,
    stripe_api: stripe.StripeClient,
    tmp_path: Path,
    outbox: _Outbox,
    in_process_sends: _InProcessSends,
) -> None:
    command = _capture_decided(_stripe_authorized(stripe_api), 2100, outbox)

    payment = _kill_a_worker_after_it_sends(stripe_settings, tmp_path, command, in_process_sends)
    assert _stripe_charge(stripe_api, payment.intent_id) == StripeCharge(
        status="succeeded", captured=True, amount=HOLD, refunds=[HOLD - 2100]
    )

    runs = _run_workers(tmp_path, ["w2"], [command.pk], _worker_env(stripe_settings))

    _assert_ran(runs)
    assert [result["state"] for result in runs[0].results] == [CommandState.SUCCEEDED]
    sends = _sends(tmp_path, payment.intent_id)
    # Same request again; localstripe refuses the repeat (no idempotent replay), and the
    # service reconciles with the PaymentIntent it retrieves instead of failing the command.
    assert [(s["worker"], s["answer"], s["key"]) for s in sends] == [
        ("doomed", "captured", command.idempotency_key),
        ("w2", "refused", command.idempotency_key),
    ]
    assert sends[1]["error"].startswith("UnexpectedState")
    assert _stripe_charge(stripe_api, payment.intent_id) == StripeCharge(
        status="succeeded", captured=True, amount=HOLD, refunds=[HOLD - 2100]
    )
    _assert_recorded_once(command, 2100, attempts=2)
