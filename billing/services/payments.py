"""Payments from opening to the hold: the card step, what the provider says, holds placed later.

A payment's state and totals change only here and in the other modules of this package,
under a row lock, and only forward; every change writes a PaymentEvent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts.choices import CURRENCIES
from accounts.models import User
from accounts.services import email_queue
from accounts.sql import cursor_prepared, insert_select, saved
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
)
from billing.models import (
    PAYMENT_TRANSITIONS,
    CommandKind,
    CommandState,
    Payment,
    PaymentState,
    Settlement,
)
from billing.selectors import payment_subject
from billing.services.receipts import receipt_email_queue
from billing.services.records import (
    HOLD_ENDING_COMMANDS,
    UNPAID_STATES,
    command_write,
    payment_event_new,
    payment_event_write,
)

# Stripe's statuses of a PaymentIntent, as the state of our payment they prove.
INTENT_STATES = {
    "requires_capture": PaymentState.AUTHORIZED,
    "succeeded": PaymentState.CAPTURED,
    "canceled": PaymentState.CANCELED,
}

logger = logging.getLogger(__name__)


def payment_open(
    *,
    payer: User,
    payee: User,
    amount_minor: int,
    currency: str,
    description: str,
    starts_at: datetime | None = None,
    hold_at: datetime | None = None,
) -> Payment:
    """A payment waiting for the card, in the caller's transaction (no provider call yet).

    `description` says what is bought, without who or when ("Architecture review"):
    `starts_at` is stored apart, so each person reads it in their own zone.
    `hold_at` set: the card is saved now and the hold placed then (sessions far ahead).
    """
    if amount_minor <= 0:
        raise PaymentRefused("The amount to pay must be more than zero.")
    if currency not in CURRENCIES:
        raise PaymentRefused(f"{currency!r} is not a currency Parley accepts.")
    payment = Payment(
        payer=payer,
        payee=payee,
        provider=settings.PAYMENT_PROVIDER,
        description=description[:200],
        starts_at=starts_at,
        currency=currency,
        amount_minor=amount_minor,
        hold_at=hold_at,
    )
    opened = payment_event_new(
        payment, "opened", payer, amount_minor, hold_at=hold_at.isoformat() if hold_at else None
    )
    if connection.vendor != "postgresql":
        payment.save(force_insert=True)
        opened.payment = payment
        opened.save()
        return payment
    # Every booking opens one inside its transaction: the payment and its event go in one
    # statement (one round trip instead of two, and no ORM save to build).
    payment_sql, payment_params = insert_select(payment)
    event_sql, event_params = insert_select(
        opened, computed={"payment_id": ("payment.id", ())}, source="payment"
    )
    with cursor_prepared() as cursor:
        cursor.execute(
            f"WITH payment AS ({payment_sql} RETURNING id), event AS ({event_sql})"  # noqa: S608 - built from the models; values are parameters
            " SELECT id FROM payment",
            [*payment_params, *event_params],
        )
        [(payment_id,)] = cursor.fetchall()
    saved(payment, payment_id)
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
        # Said in the current zone (the payer's, on their request), the zone named.
        hold_at = timezone.localtime(payment.hold_at)
        raise PaymentRefused(
            f"Your card is saved; the hold is placed on {hold_at.day} {hold_at:%B %H:%M} "
            f"({timezone.get_current_timezone_name()}). There is nothing to pay now."
        )


def _payment_record_provider_id(payment: Payment, field: str, value: str) -> None:
    """Keep the first provider object created for a payment, while it still waits for the
    card; refuse (PaymentRefused) when the payment no longer does.

    Decided on the payment's locked row. A conditional UPDATE whose condition spans a
    relation (`.exclude(settlement__isnull=False)`) runs as `UPDATE … WHERE id IN (SELECT …)`,
    and PostgreSQL re-checks only the target row's own columns after waiting for its lock: a
    release committed meanwhile went unseen and the intent was written onto a released
    payment with nothing to cancel it (issue 16 B).

    A racing duplicate is dropped and canceled at the provider. An intent created for a
    payment that ended meanwhile (the reservation expired while it was being created) is
    recorded and canceled through the command outbox, so the provider cancels it even if the
    client confirms it before the cancel arrives, and however long the provider is away.
    """
    duplicate = False
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        current = getattr(locked, field)
        ended = (
            locked.state not in UNPAID_STATES or Settlement.objects.filter(payment=locked).exists()
        )
        if not current and (not ended or field == "intent_id"):
            setattr(locked, field, value)
            locked.save(update_fields=[field, "updated_at"])
            payment_event_write(
                locked,
                f"{field.removesuffix('_id')}_created",
                None,
                None,
                provider_id=value,
                **({"after_end": True} if ended else {}),
            )
            if ended and not locked.commands.filter(kind__in=HOLD_ENDING_COMMANDS).exists():
                command_write(
                    locked, CommandKind.CANCEL, 0, "released: intent created after the end"
                )
        duplicate = bool(current) and current != value
    payment.refresh_from_db()
    if duplicate and field == "intent_id":
        try:
            gateway_for(payment.provider).intent_cancel(
                value, idempotency_key=f"parley-orphan-{value}-cancel"
            )
        except GatewayError:
            logger.warning("payment %s: could not cancel unused intent %s", payment.pk, value)
    if ended or duplicate:
        _payment_check_payable(payment)


def payment_local_card(payment_id: int, *, card_number: str) -> Payment:
    """The local provider's card form was submitted: authorize (or save) with that card.

    The local provider plays Stripe.js here; its answer is applied like any other.
    """
    from billing.gateways.local import LocalGateway

    payment = Payment.objects.get(pk=payment_id)
    if payment.provider != "local":
        raise PaymentRefused("This payment is taken by card at Stripe, not by the test form.")
    try:
        checkout_saves_card = payment_checkout(payment_id).saves_card
    except PaymentRefused:
        # The same form submitted twice at once: the other submission placed the hold while
        # this one was on its way. That hold is this submission's answer too.
        payment.refresh_from_db()
        if payment.state in (PaymentState.AUTHORIZED, PaymentState.CAPTURED):
            return payment
        raise
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
        # The same form submitted twice at once (a double click, a retry): the provider took
        # the first and refuses the rest for the intent's state. What it holds is the answer
        # to each of them, as a repeated request to Stripe gets the first one's answer.
        payment = payment_sync(payment.pk, source="card_form")
        saved = checkout_saves_card and payment.state == PaymentState.CARD_SAVED
        # Only a hold (or the saved card) answers this submission; a payment that ended
        # (released, failed) is refused with the provider's reason.
        if saved or payment.state in (PaymentState.AUTHORIZED, PaymentState.CAPTURED):
            return payment
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
        payment_event_write(
            payment, "authorization_failed", None, None, source=source, error=message
        )


def payment_apply_intent(payment_id: int, intent: Intent, *, source: str) -> Payment:
    """Move the payment forward to what the provider's PaymentIntent proves; never back.

    Safe to call any number of times with any snapshot, in any order.
    """
    return payment_apply_intent_marking(payment_id, intent, source=source)[0]


def payment_apply_intent_marking(
    payment_id: int, intent: Intent, *, source: str
) -> tuple[Payment, bool]:
    """`payment_apply_intent`, also saying whether it marked the pending capture or cancel
    command done (the command sender then has nothing more to write)."""
    marked = False
    with transaction.atomic():
        # The payer and payee come along: a capture's receipt names both.
        payment = (
            Payment.objects.select_for_update(of=("self",))
            .select_related("payer", "payee")
            .get(pk=payment_id)
        )
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
                payment_event_write(
                    payment, "authorization_failed", None, None, source=source, error=intent.error
                )
            return payment, False
        if (
            target == PaymentState.AUTHORIZED
            and payment.state == PaymentState.CANCELED
            and payment.authorized_minor == 0
        ):
            # The cancel was heard before the authorization (webhooks come in any order): the
            # hold existed, and all of it was given back.
            payment.authorized_minor = payment.released_minor = payment.amount_minor
            payment.intent_id = intent.id
            payment.save(
                update_fields=["authorized_minor", "released_minor", "intent_id", "updated_at"]
            )
            payment_event_write(
                payment, "authorized_late", None, payment.amount_minor, source=source
            )
            # Unless the provider itself reported this intent canceled (then this snapshot is
            # merely older than that one), the payment ended here without a hold, and only a
            # cancel already written gives this one back: without one the client's card
            # would keep it. A cancel the provider already did is reconciled as done.
            canceled_there = payment.events.filter(
                kind=PaymentState.CANCELED, data__intent=intent.id
            ).exists()
            if (
                not canceled_there
                and not payment.commands.filter(kind__in=HOLD_ENDING_COMMANDS).exists()
            ):
                command_write(payment, CommandKind.CANCEL, 0, "released: authorized after the end")
            return payment, False
        if target is None or not _moves_forward(payment.state, target):
            return payment, False
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
            marked = _commands_mark_done(payment, CommandKind.CAPTURE, intent.id)
        if target == PaymentState.CANCELED:
            payment.released_minor = payment.authorized_minor - payment.captured_minor
            marked = _commands_mark_done(payment, CommandKind.CANCEL, intent.id)
        old = payment.state
        payment.state = target
        payment.save()
        amount = {
            PaymentState.AUTHORIZED: payment.authorized_minor,
            PaymentState.CAPTURED: payment.captured_minor,
            PaymentState.CANCELED: payment.released_minor,
        }[target]
        payment_event_write(payment, target, None, amount, source=source, old=old, intent=intent.id)
        if target == PaymentState.CAPTURED:
            # The provider confirmed the charge: now, and only now, the client gets a receipt.
            receipt_email_queue(payment)
        authorized_now = was_unpaid and target == PaymentState.AUTHORIZED
        decided = authorized_now and Settlement.objects.filter(payment=payment).exists()
        if authorized_now and not decided:
            signals.payment_authorized.send(sender=Payment, payment=payment)
        elif authorized_now:
            # Authorized after the purchase was already released (the reservation expired
            # while the card was being confirmed): give the hold back, unless the release
            # already wrote its cancel.
            if not payment.commands.filter(kind__in=HOLD_ENDING_COMMANDS).exists():
                command_write(payment, CommandKind.CANCEL, 0, "released: authorized too late")
    return payment, marked


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
        payment_event_write(
            payment, "card_saved", None, None, source=source, hold_at=str(payment.hold_at)
        )
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


def _commands_mark_done(payment: Payment, kind: str, provider_ref: str) -> bool:
    """Mark the payment's pending commands of `kind` done; returns whether there was one."""
    marked = payment.commands.filter(kind=kind, state=CommandState.PENDING).update(
        state=CommandState.SUCCEEDED,
        finished_at=timezone.now(),
        provider_ref=provider_ref,
        leased_until=None,
        last_error="",
    )
    return marked > 0


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
    try:
        _payment_record_provider_id(payment, "intent_id", intent.id)
    except PaymentRefused:
        # Released while the hold was being placed: the intent is recorded with its cancel
        # written; applying it records the hold that the cancel gives back.
        payment.refresh_from_db()
        if payment.intent_id != intent.id:
            raise
    return payment_apply_intent(payment.pk, intent, source="off_session")


def pay_again_email(payment: Payment, error: str) -> None:
    """Tell the payer the hold could not be placed and how to pay again."""
    from django.urls import reverse

    email_queue(
        key=f"payment-{payment.pk}-pay-again-{payment.events.filter(kind='authorization_failed').count()}",
        to=payment.payer.email,
        subject=f"Action needed: your payment for {payment_subject(payment, payment.payer)}",
        template="billing/email/pay_again.txt",
        context={
            "payment": payment,
            "error": error,
            "pay_url": settings.SITE_URL + reverse("billing:pay", args=[payment.pk]),
        },
    )
