"""Every change to payments: holds, settlements, commands to the provider, refunds, webhooks.

Rules kept here (STYLE.md, PRODUCT.md Money):
- A payment's state and totals change only in this module, under a row lock, and only
  forward; every change writes a PaymentEvent.
- Decisions (settle, release, refund, transfer) are written as PaymentCommands inside the
  caller's transaction. The provider is called after commit, by `command_execute`, never
  inside a transaction.
- What the provider says (a command's answer, the browser's return, a webhook) is applied by
  `payment_apply_intent`, which moves state only forward, so duplicates and out-of-order
  arrivals change nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.choices import CURRENCIES
from accounts.models import User
from accounts.services import email_queue
from billing import signals
from billing.errors import BillingError, PaymentRefused
from billing.gateways import gateway_for
from billing.gateways.base import (
    CardDeclined,
    GatewayError,
    Intent,
    ProviderUnavailable,
    Setup,
    UnexpectedState,
    WebhookMessage,
)
from billing.models import (
    PAYMENT_TRANSITIONS,
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
    PayoutAccount,
    Settlement,
    WebhookEvent,
)
from billing.pricing import call_charge, format_money, platform_fee

logger = logging.getLogger(__name__)

# Stripe's statuses of a PaymentIntent, as the state of our payment they prove.
INTENT_STATES = {
    "requires_capture": PaymentState.AUTHORIZED,
    "succeeded": PaymentState.CAPTURED,
    "canceled": PaymentState.CANCELED,
}
HOLD_ENDING_COMMANDS = (CommandKind.CAPTURE, CommandKind.CANCEL)
# States from which a payment has no hold yet.
UNPAID_STATES = (PaymentState.PENDING, PaymentState.CARD_SAVED)


# --- Opening a payment and taking the card --------------------------------------------------


def payment_open(
    *,
    payer: User,
    payee: User,
    amount_minor: int,
    currency: str,
    description: str,
    hold_at: datetime | None = None,
) -> Payment:
    """A payment waiting for the card, in the caller's transaction (no provider call yet).

    `hold_at` set: the card is saved now and the hold placed then (sessions far ahead).
    """
    if amount_minor <= 0:
        raise PaymentRefused("The amount to pay must be more than zero.")
    if currency not in CURRENCIES:
        raise PaymentRefused(f"{currency!r} is not a currency Parley accepts.")
    payment = Payment.objects.create(
        payer=payer,
        payee=payee,
        provider=settings.PAYMENT_PROVIDER,
        description=description[:200],
        currency=currency,
        amount_minor=amount_minor,
        hold_at=hold_at,
    )
    _event(payment, "opened", payer, amount_minor, hold_at=hold_at.isoformat() if hold_at else None)
    return payment


@dataclass(frozen=True)
class Checkout:
    """What the pay page needs: the secret Stripe.js confirms, and whether it saves a card."""

    client_secret: str
    saves_card: bool


def payment_checkout(payment_id: int) -> Checkout:
    """Make sure the provider has the objects the card form confirms: a PaymentIntent for a
    hold now, or a SetupIntent to save the card. Calls the provider; run outside transactions.

    Repeating it (a reload, two tabs) reuses what exists: creation is keyed per payment.
    """
    payment = Payment.objects.select_related("payer").get(pk=payment_id)
    _payment_check_payable(payment)
    gateway = gateway_for(payment.provider)
    if not payment.customer_id:
        customer = gateway.customer_create(
            email=payment.payer.email, idempotency_key=f"parley-payment-{payment.pk}-customer"
        )
        Payment.objects.filter(pk=payment.pk, customer_id="").update(customer_id=customer)
        payment.refresh_from_db()
    metadata = {"payment": str(payment.pk)}
    if (
        payment.hold_at is not None
        and payment.state == PaymentState.PENDING
        and not (payment.intent_id)
    ):
        setup = None
        if not payment.setup_id:
            setup = gateway.setup_create(
                customer=payment.customer_id,
                metadata=metadata,
                idempotency_key=f"parley-payment-{payment.pk}-setup",
            )
            _payment_record_provider_id(payment, "setup_id", setup.id)
        if setup is None or setup.id != payment.setup_id:  # an earlier or racing request's
            setup = gateway.setup_retrieve(payment.setup_id)
        return Checkout(client_secret=setup.client_secret, saves_card=True)
    intent = None
    if not payment.intent_id:
        intent = gateway.intent_create(
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            metadata=metadata,
            customer=payment.customer_id,
            idempotency_key=f"parley-payment-{payment.pk}-intent",
        )
        _payment_record_provider_id(payment, "intent_id", intent.id)
    if intent is None or intent.id != payment.intent_id:  # an earlier or racing request's
        intent = gateway.intent_retrieve(payment.intent_id)
    return Checkout(client_secret=intent.client_secret, saves_card=False)


def _payment_check_payable(payment: Payment) -> None:
    if Settlement.objects.filter(payment=payment).exists():
        raise PaymentRefused("This booking is no longer waiting for payment; nothing is charged.")
    if payment.state not in UNPAID_STATES:
        raise PaymentRefused(
            f"This payment is {payment.get_state_display().lower()}; there is nothing to pay."
        )
    if payment.state == PaymentState.CARD_SAVED and payment.hold_at is not None:
        raise PaymentRefused(
            f"Your card is saved; the hold is placed on {payment.hold_at:%d %B %H:%M} UTC. "
            "There is nothing to pay now."
        )


def _payment_record_provider_id(payment: Payment, field: str, value: str) -> None:
    """Keep the first provider object created for a payment, while it still waits for the
    card. A racing duplicate is dropped; if the payment ended meanwhile (the reservation
    expired while the intent was being created), the new intent is canceled at the provider
    and the payer is told, so no hold can be placed on a purchase that no longer exists."""
    with transaction.atomic():
        changed = (
            Payment.objects.filter(pk=payment.pk, state__in=UNPAID_STATES, **{field: ""})
            .exclude(settlement__isnull=False)
            .update(**{field: value})
        )
        if changed:
            _event(payment, f"{field.removesuffix('_id')}_created", None, None, provider_id=value)
    payment.refresh_from_db()
    if getattr(payment, field) == value:
        return
    if field == "intent_id":
        try:
            gateway_for(payment.provider).intent_cancel(
                value, idempotency_key=f"parley-orphan-{value}-cancel"
            )
        except GatewayError:
            logger.warning("payment %s: could not cancel unused intent %s", payment.pk, value)
    _payment_check_payable(payment)


def payment_local_card(payment_id: int, *, card_number: str) -> Payment:
    """The local provider's card form was submitted: authorize (or save) with that card.

    The local provider plays Stripe.js here; its answer is applied like any other.
    """
    from billing.gateways.local import LocalGateway

    payment = Payment.objects.get(pk=payment_id)
    if payment.provider != "local":
        raise PaymentRefused("This payment is taken by card at Stripe, not by the test form.")
    checkout_saves_card = payment_checkout(payment_id).saves_card
    payment.refresh_from_db()
    gateway = LocalGateway()
    try:
        if checkout_saves_card:
            setup = gateway.setup_confirm_card(payment.setup_id, card_number=card_number)
            return payment_apply_setup(payment.pk, setup, source="card_form")
        intent = gateway.intent_confirm_card(payment.intent_id, card_number=card_number)
    except CardDeclined as error:
        payment_record_failure(payment.pk, str(error), source="card_form")
        raise PaymentRefused(f"{error} Try another card.") from error
    except UnexpectedState as error:
        raise PaymentRefused(str(error)) from error
    return payment_apply_intent(payment.pk, intent, source="card_form")


def payment_sync(payment_id: int, *, source: str) -> Payment:
    """Ask the provider what it holds for this payment and apply it (the browser's return
    from Stripe, and reconciliation). Calls the provider; run outside transactions."""
    payment = Payment.objects.get(pk=payment_id)
    gateway = gateway_for(payment.provider)
    if payment.intent_id:
        return payment_apply_intent(
            payment.pk, gateway.intent_retrieve(payment.intent_id), source=source
        )
    if payment.setup_id:
        return payment_apply_setup(
            payment.pk, gateway.setup_retrieve(payment.setup_id), source=source
        )
    return payment


def payment_record_failure(payment_id: int, message: str, *, source: str) -> None:
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        payment.last_error = message[:300]
        payment.save(update_fields=["last_error", "updated_at"])
        _event(payment, "authorization_failed", None, None, source=source, error=message)


# --- Applying what the provider holds --------------------------------------------------------


def payment_apply_intent(payment_id: int, intent: Intent, *, source: str) -> Payment:
    """Move the payment forward to what the provider's PaymentIntent proves; never back.

    Safe to call any number of times with any snapshot, in any order.
    """
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        if payment.intent_id and intent.id != payment.intent_id:
            raise BillingError(f"Intent {intent.id} does not belong to payment {payment.pk}.")
        if intent.amount_minor != payment.amount_minor or intent.currency != payment.currency:
            raise BillingError(
                f"The provider holds {intent.amount_minor} {intent.currency} for payment "
                f"{payment.pk}, which is for {payment.amount_minor} {payment.currency}."
            )
        target = INTENT_STATES.get(intent.status)
        if intent.status == "requires_payment_method" and intent.error:
            # A decline heard after the hold was placed (the first card, before the second
            # one worked) is stale: it must not put an error on a paid payment.
            if payment.state in UNPAID_STATES and payment.last_error != intent.error[:300]:
                payment.last_error = intent.error[:300]
                payment.save(update_fields=["last_error", "updated_at"])
                _event(
                    payment, "authorization_failed", None, None, source=source, error=intent.error
                )
            return payment
        if (
            target == PaymentState.AUTHORIZED
            and payment.state == PaymentState.CANCELED
            and payment.authorized_minor == 0
        ):
            # The cancel was heard before the authorization (webhooks come in any order): the
            # hold existed, and all of it was given back.
            payment.authorized_minor = payment.released_minor = payment.amount_minor
            ended_without_intent = not payment.intent_id
            payment.intent_id = intent.id
            payment.save(
                update_fields=["authorized_minor", "released_minor", "intent_id", "updated_at"]
            )
            _event(payment, "authorized_late", None, payment.amount_minor, source=source)
            if ended_without_intent:
                # The payment ended before this intent was known, so nobody canceled it at
                # the provider: do it now, so the client's card is not left with a hold.
                _command_write(payment, CommandKind.CANCEL, 0, "released: authorized after the end")
            return payment
        if target is None or not _moves_forward(payment.state, target):
            return payment
        was_unpaid = payment.state in UNPAID_STATES
        if not payment.intent_id:
            payment.intent_id = intent.id
        if intent.payment_method:
            payment.payment_method_id = intent.payment_method
        payment.last_error = ""
        if target in (PaymentState.AUTHORIZED, PaymentState.CAPTURED):
            payment.authorized_minor = payment.amount_minor
        if target == PaymentState.CAPTURED:
            captured = intent.captured_minor
            if captured is None:
                captured = _capture_amount_decided(payment)
            payment.captured_minor = captured
            payment.released_minor = payment.authorized_minor - captured
            payment.charge_id = intent.charge or payment.charge_id
            _commands_mark_done(payment, CommandKind.CAPTURE, intent.id)
        if target == PaymentState.CANCELED:
            payment.released_minor = payment.authorized_minor - payment.captured_minor
            _commands_mark_done(payment, CommandKind.CANCEL, intent.id)
        old = payment.state
        payment.state = target
        payment.save()
        amount = {
            PaymentState.AUTHORIZED: payment.authorized_minor,
            PaymentState.CAPTURED: payment.captured_minor,
            PaymentState.CANCELED: payment.released_minor,
        }[target]
        _event(payment, target, None, amount, source=source, old=old, intent=intent.id)
        decided = Settlement.objects.filter(payment=payment).exists()
        if was_unpaid and target == PaymentState.AUTHORIZED and not decided:
            signals.payment_authorized.send(sender=Payment, payment=payment)
        elif was_unpaid and target == PaymentState.AUTHORIZED:
            # Authorized after the purchase was already released (the reservation expired
            # while the card was being confirmed): give the hold back, unless the release
            # already wrote its cancel.
            if not payment.commands.filter(kind__in=HOLD_ENDING_COMMANDS).exists():
                _command_write(payment, CommandKind.CANCEL, 0, "released: authorized too late")
    return payment


def payment_apply_setup(payment_id: int, setup: Setup, *, source: str) -> Payment:
    """The card was saved for a later hold: remember it and tell the layer above."""
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        if setup.id != payment.setup_id:
            raise BillingError(f"Setup {setup.id} does not belong to payment {payment.pk}.")
        if setup.status != "succeeded" or payment.state != PaymentState.PENDING:
            return payment
        if Settlement.objects.filter(payment=payment).exists():
            return payment
        payment.payment_method_id = setup.payment_method
        payment.state = PaymentState.CARD_SAVED
        payment.last_error = ""
        payment.save()
        _event(payment, "card_saved", None, None, source=source, hold_at=str(payment.hold_at))
        signals.payment_card_saved.send(sender=Payment, payment=payment)
    return payment


def _moves_forward(current: str, target: str) -> bool:
    if target in PAYMENT_TRANSITIONS[current]:
        return True
    # An authorization may be learned of only when it is already captured or canceled.
    return current in UNPAID_STATES and target in (PaymentState.CAPTURED, PaymentState.CANCELED)


def _capture_amount_decided(payment: Payment) -> int:
    command = payment.commands.filter(kind=CommandKind.CAPTURE).first()
    return command.amount_minor if command else payment.authorized_minor


def _commands_mark_done(payment: Payment, kind: str, provider_ref: str) -> None:
    payment.commands.filter(kind=kind, state=CommandState.PENDING).update(
        state=CommandState.SUCCEEDED,
        finished_at=timezone.now(),
        provider_ref=provider_ref,
        leased_until=None,
    )


# --- Deciding the money: settlements, releases, refunds -------------------------------------


def payments_lock(payment_ids: list[int]) -> None:
    """Lock payments for the rest of the caller's transaction, in one order.

    Payments are locked before the rows that point to them (seats, rooms): the provider's
    answers enter through the payment, so every writer takes the payment first and no two
    writers wait for each other in a circle.
    """
    ids = sorted({pk for pk in payment_ids if pk is not None})
    if ids:
        list(Payment.objects.select_for_update().filter(pk__in=ids).order_by("pk").values("pk"))


def payment_settle(
    payment: Payment,
    *,
    amount_minor: int,
    currency: str,
    rule: str,
    inputs: dict[str, Any],
    explanation: str,
    actor: User | None = None,
) -> Settlement:
    """Decide what the payment finally costs, inside the caller's transaction, and write the
    capture (amount > 0) or cancel (0) command. The first settlement stands: settling again
    returns it unchanged, so a room closed twice captures once.
    """
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        existing = Settlement.objects.filter(payment=locked).first()
        if existing is not None:
            if (existing.amount_minor, existing.rule) != (amount_minor, rule):
                raise PaymentRefused(
                    f"This payment is already settled ({existing.explanation}); a settlement "
                    "is final. A refund gives money back."
                )
            return existing
        if currency != locked.currency:
            raise PaymentRefused(
                f"The settlement is in {currency} but the payment is in {locked.currency}."
            )
        if amount_minor < 0:
            raise PaymentRefused("A settlement cannot be negative.")
        if amount_minor > 0 and locked.state != PaymentState.AUTHORIZED:
            raise PaymentRefused(
                f"Nothing can be charged: the payment is {locked.get_state_display().lower()}."
            )
        if amount_minor > locked.authorized_minor:
            raise PaymentRefused(
                f"The settlement {format_money(amount_minor, currency)} is more than the hold "
                f"of {format_money(locked.authorized_minor, currency)}."
            )
        fee = platform_fee(amount_minor, settings.PLATFORM_FEE_PERCENT)
        settlement = Settlement.objects.create(
            payment=locked,
            rule=rule,
            amount_minor=amount_minor,
            platform_fee_minor=fee,
            payout_minor=amount_minor - fee,
            currency=currency,
            inputs=inputs,
            explanation=explanation[:300],
            payout_due_at=timezone.now() + timedelta(hours=settings.PAYOUT_DELAY_HOURS),
        )
        _event(locked, "settled", actor, amount_minor, rule=rule, explanation=explanation)
        if amount_minor > 0:
            _command_write(locked, CommandKind.CAPTURE, amount_minor, f"settlement: {rule}")
        else:
            _payment_release(locked, f"settlement: {rule}")
    payment.refresh_from_db()
    return settlement


def payment_settle_call(
    payment: Payment,
    *,
    pricing: str,
    price_minor: int,
    cap_minor: int,
    billable_seconds: int,
    outcome: str = "completed",
    no_show_fee_percent: int = 0,
    currency: str,
    actor: User | None = None,
) -> Settlement:
    """Settle a call from its inputs, inside the caller's transaction (the room close).

    The pure `call_charge` turns the inputs into money; the settlement stores them with the
    rule, so staff can see exactly why the number is what it is.
    """
    try:
        charge = call_charge(
            pricing=pricing,
            price_minor=price_minor,
            cap_minor=cap_minor,
            billable_seconds=billable_seconds,
            outcome=outcome,
            no_show_fee_percent=no_show_fee_percent,
        )
    except ValueError as error:
        raise PaymentRefused(f"The call cannot be priced: {error}.") from error
    return payment_settle(
        payment,
        amount_minor=charge.amount_minor,
        currency=currency,
        rule=charge.rule,
        inputs={
            "pricing": pricing,
            "price_minor": price_minor,
            "cap_minor": cap_minor,
            "billable_seconds": billable_seconds,
            "outcome": outcome,
            "no_show_fee_percent": no_show_fee_percent,
            "rounding": "every started minute" if pricing == "per_minute" else "none",
        },
        explanation=charge.explanation,
        actor=actor,
    )


def payment_release(payment: Payment, *, reason: str, actor: User | None = None) -> Settlement:
    """Nothing is owed (cancellation in time, expert canceled, reservation expired): the hold,
    if any, is canceled. Inside the caller's transaction."""
    return payment_settle(
        payment,
        amount_minor=0,
        currency=payment.currency,
        rule="released",
        inputs={"reason": reason},
        explanation=f"Released in full: {reason}.",
        actor=actor,
    )


def _payment_release(payment: Payment, reason: str) -> None:
    if payment.intent_id:
        _command_write(payment, CommandKind.CANCEL, 0, reason)
    elif payment.state in UNPAID_STATES:
        # Nothing exists at the provider to cancel (the card was never asked for, or only
        # saved for later): the payment ends here.
        old, payment.state = payment.state, PaymentState.CANCELED
        payment.save(update_fields=["state", "updated_at"])
        _event(payment, PaymentState.CANCELED, None, 0, old=old, reason=reason)


def payment_refund(
    payment_id: int, *, amount_minor: int, currency: str, reason: str, actor: User | None
) -> PaymentCommand:
    """Give back part or all of what was charged. The refund is counted when decided, so two
    refunds decided at once can never exceed the charge (the database checks it too)."""
    if not reason.strip():
        raise PaymentRefused("Say why the money is refunded; the client and staff see it.")
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        if currency != payment.currency:
            raise PaymentRefused(
                f"The refund is in {currency} but the payment is in {payment.currency}."
            )
        if amount_minor <= 0:
            raise PaymentRefused("The refund must be more than zero.")
        if payment.state != PaymentState.CAPTURED:
            raise PaymentRefused(
                f"Only a charged payment can be refunded; this one is "
                f"{payment.get_state_display().lower()}."
            )
        if amount_minor > payment.refundable_minor:
            raise PaymentRefused(
                f"At most {format_money(payment.refundable_minor, currency)} can be refunded "
                f"(charged {format_money(payment.captured_minor, currency)}, already refunded "
                f"{format_money(payment.refunded_minor, currency)})."
            )
        payment.refunded_minor += amount_minor
        payment.save(update_fields=["refunded_minor", "updated_at"])
        command = _command_write(payment, CommandKind.REFUND, amount_minor, reason)
        _event(payment, "refund_decided", actor, amount_minor, reason=reason, command=command.pk)
    return command


def _command_write(payment: Payment, kind: str, amount_minor: int, reason: str) -> PaymentCommand:
    from billing.tasks import command_execute_task

    command = PaymentCommand.objects.create(
        payment=payment, kind=kind, amount_minor=amount_minor, reason=reason[:200]
    )
    _event(payment, f"{kind}_requested", None, amount_minor or None, command=command.pk)
    # robust: a broker that is down must not undo the decision; the sweep sends it later.
    transaction.on_commit(lambda: command_execute_task.delay(command.pk), robust=True)
    return command


# --- Sending commands to the provider -------------------------------------------------------


def command_execute(command_id: int) -> str:
    """Send one command to the provider and record the outcome. Safe to run twice, and from
    two workers at once: a lease (a conditional UPDATE) lets one send at a time, and the
    idempotency key makes a repeat of the same request harmless at the provider.

    Returns the command's state afterwards.
    """
    now = timezone.now()
    leased = PaymentCommand.objects.filter(
        Q(leased_until__isnull=True) | Q(leased_until__lt=now),
        pk=command_id,
        state=CommandState.PENDING,
    ).update(
        leased_until=now + timedelta(seconds=settings.PAYMENT_COMMAND_LEASE_SECONDS),
        attempts=F("attempts") + 1,
    )
    command = PaymentCommand.objects.select_related("payment").get(pk=command_id)
    if not leased:
        return command.state
    gateway = gateway_for(command.payment.provider)
    try:
        outcome = _command_send(gateway, command)
    except UnexpectedState as error:
        # The provider refused for the object's state. It may be that an earlier attempt of
        # this very command succeeded and its answer was lost: ask, never resend differently.
        outcome = _command_reconcile(gateway, command, str(error))
    except ProviderUnavailable as error:
        _command_retry_later(command, str(error))
        return CommandState.PENDING
    except GatewayError as error:
        _command_fail(command, str(error))
        return CommandState.FAILED
    if isinstance(outcome, str) and outcome.startswith("failed:"):
        _command_fail(command, outcome.removeprefix("failed:"))
        return CommandState.FAILED
    _command_succeed(command, outcome)
    return CommandState.SUCCEEDED


def _command_send(gateway: Any, command: PaymentCommand) -> Intent | str:
    payment = command.payment
    key = command.idempotency_key
    if command.kind == CommandKind.CAPTURE:
        return gateway.intent_capture(  # type: ignore[no-any-return]
            payment.intent_id, amount_minor=command.amount_minor, idempotency_key=key
        )
    if command.kind == CommandKind.CANCEL:
        return gateway.intent_cancel(payment.intent_id, idempotency_key=key)  # type: ignore[no-any-return]
    if command.kind == CommandKind.REFUND:
        return gateway.refund_create(  # type: ignore[no-any-return]
            payment.intent_id,
            amount_minor=command.amount_minor,
            idempotency_key=key,
            metadata={"payment": str(payment.pk), "command": str(command.pk)},
        )
    return gateway.transfer_create(  # type: ignore[no-any-return]
        amount_minor=command.amount_minor,
        currency=payment.currency,
        destination=command.destination,
        idempotency_key=key,
        metadata={"payment": str(payment.pk), "command": str(command.pk)},
        # Tied to the client's charge, the transfer waits for its funds instead of failing.
        source_transaction=payment.charge_id,
    )


def _command_reconcile(gateway: Any, command: PaymentCommand, error: str) -> Intent | str:
    """What the provider holds decides: the effect is there (success) or it cannot be."""
    if command.kind not in (CommandKind.CAPTURE, CommandKind.CANCEL):
        return f"failed:{error}"
    intent: Intent = gateway.intent_retrieve(command.payment.intent_id)
    wanted = "succeeded" if command.kind == CommandKind.CAPTURE else "canceled"
    if intent.status == wanted:
        return intent
    return f"failed:{error} (the provider holds it as {intent.status})"


def _command_succeed(command: PaymentCommand, outcome: Intent | str) -> None:
    if isinstance(outcome, Intent):
        # Applying the intent marks this command done in the same transaction.
        payment_apply_intent(command.payment_id, outcome, source=f"command {command.pk}")
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=command.payment_id)
        changed = PaymentCommand.objects.filter(pk=command.pk, state=CommandState.PENDING).update(
            state=CommandState.SUCCEEDED,
            finished_at=timezone.now(),
            provider_ref=outcome.id if isinstance(outcome, Intent) else outcome,
            leased_until=None,
            last_error="",
        )
        if changed and command.kind in (CommandKind.REFUND, CommandKind.TRANSFER):
            _event(payment, f"{command.kind}_sent", None, command.amount_minor, ref=str(outcome))


def _command_fail(command: PaymentCommand, error: str) -> None:
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=command.payment_id)
        changed = PaymentCommand.objects.filter(pk=command.pk, state=CommandState.PENDING).update(
            state=CommandState.FAILED,
            finished_at=timezone.now(),
            leased_until=None,
            last_error=error[:300],
        )
        if not changed:
            return
        if command.kind == CommandKind.REFUND:
            # The refund did not happen: it no longer counts against the charge.
            Payment.objects.filter(pk=payment.pk).update(
                refunded_minor=F("refunded_minor") - command.amount_minor
            )
        _event(payment, f"{command.kind}_failed", None, command.amount_minor or None, error=error)
    logger.error("payment command %s failed: %s", command.pk, error)


def _command_retry_later(command: PaymentCommand, error: str) -> None:
    delay = min(2 ** min(command.attempts, 10) * 5, 3600)
    PaymentCommand.objects.filter(pk=command.pk, state=CommandState.PENDING).update(
        leased_until=None,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
        last_error=error[:300],
    )
    logger.warning(
        "payment command %s: provider unavailable (%s); retry in %s s", command.pk, error, delay
    )


def commands_due_ids(now: datetime | None = None, limit: int = 500) -> list[int]:
    """Pending commands whose time has come and that no worker holds (the beat sweep)."""
    now = now or timezone.now()
    return list(
        PaymentCommand.objects.filter(
            Q(leased_until__isnull=True) | Q(leased_until__lt=now),
            state=CommandState.PENDING,
            next_attempt_at__lte=now,
        ).values_list("pk", flat=True)[:limit]
    )


# --- Holds placed later, payouts --------------------------------------------------------------


def holds_due_ids(now: datetime | None = None) -> list[int]:
    now = now or timezone.now()
    return list(
        Payment.objects.filter(state=PaymentState.CARD_SAVED, hold_at__lte=now).values_list(
            "pk", flat=True
        )[:500]
    )


def payment_hold_place(payment_id: int) -> Payment:
    """Place the hold with the saved card, off-session (a day before the session).

    `hold_at` doubles as a lease: pushed a few minutes ahead before the provider is called,
    so the task and the sweep never place two holds. A decline clears it and emails the
    payer a link to pay again; provider trouble leaves it to be retried.
    """
    now = timezone.now()
    leased = Payment.objects.filter(
        pk=payment_id, state=PaymentState.CARD_SAVED, hold_at__lte=now, intent_id=""
    ).update(hold_at=now + timedelta(minutes=10))
    payment = Payment.objects.select_related("payer").get(pk=payment_id)
    if not leased or Settlement.objects.filter(payment=payment).exists():
        return payment
    gateway = gateway_for(payment.provider)
    try:
        intent = gateway.intent_create(
            amount_minor=payment.amount_minor,
            currency=payment.currency,
            metadata={"payment": str(payment.pk)},
            customer=payment.customer_id,
            payment_method=payment.payment_method_id,
            off_session=True,
            idempotency_key=f"parley-payment-{payment.pk}-off-session",
        )
    except (CardDeclined, UnexpectedState) as error:
        with transaction.atomic():
            Payment.objects.filter(pk=payment.pk).update(hold_at=None)
            payment_record_failure(payment.pk, str(error), source="off_session")
            pay_again_email(payment, str(error))
        payment.refresh_from_db()
        return payment
    except ProviderUnavailable as error:
        logger.warning("off-session hold for payment %s: %s; retrying", payment.pk, error)
        return payment
    _payment_record_provider_id(payment, "intent_id", intent.id)
    return payment_apply_intent(payment.pk, intent, source="off_session")


def payouts_due_create(now: datetime | None = None) -> int:
    """Write a transfer for every settlement past its dispute window with no hold on it,
    whose expert can be paid (beat). The unique transfer per payment makes it safe to repeat."""
    now = now or timezone.now()
    due = Settlement.objects.filter(
        payout_due_at__lte=now,
        payout_held=False,
        payout_minor__gt=0,
        payment__state=PaymentState.CAPTURED,
        payment__payee__payout_account__payouts_enabled=True,
    ).exclude(payment__commands__kind=CommandKind.TRANSFER)
    created = 0
    for settlement_id in due.values_list("pk", flat=True)[:500]:
        with transaction.atomic():
            settlement = Settlement.objects.select_related("payment").get(pk=settlement_id)
            payment = Payment.objects.select_for_update().get(pk=settlement.payment_id)
            if (
                settlement.payout_held
                or payment.commands.filter(kind=CommandKind.TRANSFER).exists()
            ):
                continue
            # What the expert earns shrinks with what was refunded to the client.
            refunded_share = payment.refunded_minor - platform_fee(
                payment.refunded_minor, settings.PLATFORM_FEE_PERCENT
            )
            amount = settlement.payout_minor - refunded_share
            if amount <= 0:
                continue
            account = PayoutAccount.objects.get(user_id=payment.payee_id)
            command = _command_write(
                payment, CommandKind.TRANSFER, amount, "payout after the dispute window"
            )
            PaymentCommand.objects.filter(pk=command.pk).update(destination=account.account_id)
            created += 1
    return created


def payout_account_link(user: User, *, refresh_url: str, return_url: str) -> str:
    """Where the expert goes to connect (or finish connecting) their payout account."""
    gateway = gateway_for(settings.PAYMENT_PROVIDER)
    account = PayoutAccount.objects.filter(user=user).first()
    if account is None:
        account_id = gateway.account_create(
            email=user.email, idempotency_key=f"parley-user-{user.pk}-payout-account"
        )
        account, _ = PayoutAccount.objects.get_or_create(
            user=user, defaults={"provider": gateway.name, "account_id": account_id}
        )
    return gateway.account_link(account.account_id, refresh_url=refresh_url, return_url=return_url)


def payout_account_refresh(user: User) -> PayoutAccount | None:
    """Read the account's status from the provider (after the expert returns from it)."""
    account = PayoutAccount.objects.filter(user=user).first()
    if account is None:
        return None
    details, payouts = gateway_for(account.provider).account_status(account.account_id)
    PayoutAccount.objects.filter(pk=account.pk).update(
        details_submitted=details,
        payouts_enabled=payouts,
        status_at=timezone.now(),
        updated_at=timezone.now(),
    )
    account.refresh_from_db()
    return account


# --- Webhooks --------------------------------------------------------------------------------


def webhook_receive(provider: str, payload: bytes, signature_header: str) -> WebhookEvent | None:
    """Verify and store a provider event once by its id; it is processed after commit.

    Raises BadSignature for a forged, altered or stale delivery. Returns None for a
    duplicate delivery (already stored), which is acknowledged and otherwise ignored.
    """
    message = gateway_for(provider).webhook_verify(payload, signature_header)
    return _webhook_store(provider, message)


def _webhook_store(provider: str, message: WebhookMessage) -> WebhookEvent | None:
    from billing.tasks import webhook_process_task

    try:
        with transaction.atomic():
            event = WebhookEvent.objects.create(
                provider=provider,
                event_id=message.id,
                type=message.type,
                payload={"object": message.object, "created": message.created},
            )
    except IntegrityError:
        return None
    transaction.on_commit(lambda: webhook_process_task.delay(event.pk), robust=True)
    return event


def webhook_process(event_id: int) -> bool:
    """Apply one stored event through its handler; returns False if it was already done."""
    with transaction.atomic():
        event = WebhookEvent.objects.select_for_update().get(pk=event_id)
        if event.processed_at is not None:
            return False
        handler = WEBHOOK_HANDLERS.get(event.type)
        try:
            with transaction.atomic():
                if handler is not None:
                    handler(event.provider, event.payload["object"], int(event.payload["created"]))
        except (BillingError, KeyError) as error:
            event.attempts += 1
            event.last_error = str(error)[:300]
            event.save(update_fields=["attempts", "last_error"])
            logger.error("webhook %s (%s) failed: %s", event.event_id, event.type, error)
            return False
        event.processed_at = timezone.now()
        event.attempts += 1
        event.last_error = ""
        event.save(update_fields=["processed_at", "attempts", "last_error"])
    return True


def webhooks_pending_ids(limit: int = 500) -> list[int]:
    """Stored events not processed yet (their task was lost, or a handler failed)."""
    return list(
        WebhookEvent.objects.filter(processed_at__isnull=True, attempts__lt=10).values_list(
            "pk", flat=True
        )[:limit]
    )


def _payment_by_intent(provider: str, intent_id: str) -> Payment | None:
    return Payment.objects.filter(provider=provider, intent_id=intent_id).first()


def _on_intent(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    from billing.gateways.stripe import _intent

    payment = _payment_by_intent(provider, obj["id"])
    if payment is None:
        payment_id = (obj.get("metadata") or {}).get("payment", "")
        payment = (
            Payment.objects.filter(pk=int(payment_id)).first() if payment_id.isdigit() else None
        )
    if payment is None:
        return  # not one of ours (another integration on the same account)
    payment_apply_intent(payment.pk, _intent(obj), source="webhook")


def _on_charge_refunded(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    """Refunds made outside Parley (the provider's dashboard) still count against the charge."""
    payment = _payment_by_intent(provider, obj.get("payment_intent") or "")
    if payment is None:
        return
    if obj.get("captured") and payment.state != PaymentState.CAPTURED:
        # Heard before payment_intent.succeeded (events come in any order): a refunded
        # captured charge proves the capture, so apply it first.
        captured_minor = obj.get("amount_captured")
        payment_apply_intent(
            payment.pk,
            Intent(
                id=payment.intent_id,
                status="succeeded",
                amount_minor=int(obj["amount"]),
                currency=str(obj["currency"]).upper(),
                captured_minor=int(captured_minor) if captured_minor is not None else None,
            ),
            source="webhook",
        )
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        refunded = int(obj.get("amount_refunded") or 0)
        if "amount_captured" not in obj:
            # Before API 2025-03-31.basil (and in localstripe, which has no amount_captured)
            # the uncaptured rest of a partial capture was counted as refunded too.
            refunded -= int(obj["amount"]) - locked.captured_minor
        refunded = min(refunded, locked.captured_minor)
        if locked.state == PaymentState.CAPTURED and refunded > locked.refunded_minor:
            extra = refunded - locked.refunded_minor
            locked.refunded_minor = refunded
            locked.save(update_fields=["refunded_minor", "updated_at"])
            _event(locked, "refunded_at_provider", None, extra, charge=obj.get("id"))


def _on_dispute_created(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    payment = _payment_by_intent(provider, obj.get("payment_intent") or "")
    if payment is None:
        return
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.events.filter(kind="dispute_opened", data__dispute=obj["id"]).exists():
            return
        Settlement.objects.filter(payment=locked).update(payout_held=True)
        _event(
            locked,
            "dispute_opened",
            None,
            int(obj.get("amount") or 0),
            dispute=obj["id"],
            reason=obj.get("reason") or "",
        )
        signals.payment_disputed.send(
            sender=Payment, payment=locked, dispute_id=obj["id"], reason=obj.get("reason") or ""
        )


def _on_dispute_closed(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    payment = _payment_by_intent(provider, obj.get("payment_intent") or "")
    if payment is None:
        return
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if locked.events.filter(kind="dispute_closed", data__dispute=obj["id"]).exists():
            return
        if not locked.events.filter(kind="dispute_opened", data__dispute=obj["id"]).exists():
            # Closed before we heard it open (out of order): open it first, then close.
            _on_dispute_created(provider, obj)
        _event(locked, "dispute_closed", None, None, dispute=obj["id"], status=obj.get("status"))


def _on_setup_succeeded(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    from billing.gateways.stripe import _setup

    payment = Payment.objects.filter(provider=provider, setup_id=obj["id"]).first()
    if payment is not None:
        payment_apply_setup(payment.pk, _setup(obj), source="webhook")


def _on_account_updated(provider: str, obj: dict[str, Any], created: int = 0) -> None:
    """Each event carries a snapshot of the account; events come in any order, so an older
    snapshot never overwrites a newer one."""
    status_at = datetime.fromtimestamp(created, tz=UTC)
    PayoutAccount.objects.filter(
        Q(status_at__isnull=True) | Q(status_at__lte=status_at),
        provider=provider,
        account_id=obj["id"],
    ).update(
        details_submitted=bool(obj.get("details_submitted")),
        payouts_enabled=bool(obj.get("payouts_enabled")),
        status_at=status_at,
        updated_at=timezone.now(),
    )


WEBHOOK_HANDLERS = {
    "payment_intent.amount_capturable_updated": _on_intent,
    "payment_intent.succeeded": _on_intent,
    "payment_intent.canceled": _on_intent,
    "payment_intent.payment_failed": _on_intent,
    "charge.refunded": _on_charge_refunded,
    "charge.dispute.created": _on_dispute_created,
    "charge.dispute.closed": _on_dispute_closed,
    "setup_intent.succeeded": _on_setup_succeeded,
    "account.updated": _on_account_updated,
}


# --- Internals -------------------------------------------------------------------------------


def _event(
    payment: Payment, kind: str, actor: User | None, amount_minor: int | None, **data: Any
) -> PaymentEvent:
    return PaymentEvent.objects.create(
        payment=payment, kind=kind, actor=actor, amount_minor=amount_minor, data=data
    )


def pay_again_email(payment: Payment, error: str) -> None:
    """Tell the payer the hold could not be placed and how to pay again."""
    from django.urls import reverse

    email_queue(
        key=f"payment-{payment.pk}-pay-again-{payment.events.filter(kind='authorization_failed').count()}",
        to=payment.payer.email,
        subject=f"Action needed: your payment for {payment.description}",
        template="billing/email/pay_again.txt",
        context={
            "payment": payment,
            "error": error,
            "pay_url": settings.SITE_URL + reverse("billing:pay", args=[payment.pk]),
        },
    )
