"""Deciding the money inside the caller's transaction: settlements, releases, refunds.

Each decision is written as a PaymentCommand; the provider is called after commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts.models import User
from accounts.sql import columns, cursor_prepared, load
from billing.errors import BillingError, PaymentRefused
from billing.models import (
    CommandKind,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
    Settlement,
)
from billing.pricing import call_charge, format_money, platform_fee
from billing.services.records import (
    UNPAID_STATES,
    command_write,
    payment_event_new,
    payment_event_write,
)


def payments_lock(payment_ids: Iterable[int | None] | QuerySet[Any, Any]) -> dict[int, Payment]:
    """Lock payments for the rest of the caller's transaction, in one order, and return them
    as they are under the lock, each with its settlement if it has one (read in the same query).

    Payments are locked before the rows that point to them (seats, rooms): the provider's
    answers enter through the payment, so every writer takes the payment first and no two
    writers wait for each other in a circle. `payment_ids` may be a query of ids (the seats of
    a room), so finding and locking them is one round trip.
    """
    if not isinstance(payment_ids, QuerySet):
        payment_ids = sorted({pk for pk in payment_ids if pk is not None})
        if not payment_ids:
            return {}
    locked = (
        Payment.objects.select_for_update(of=("self",))
        .select_related("settlement")
        .filter(pk__in=payment_ids)
        .order_by("pk")
    )
    return {payment.pk: payment for payment in locked}


def payments_lock_selected(ids_sql: str, params: Sequence[Any]) -> dict[int, Payment]:
    """`payments_lock` for the payments whose ids the caller's `ids_sql` selects (a room's
    seats' `SELECT payment_id FROM …`, the caller's own SQL, never input), as one prepared
    statement on PostgreSQL: the room close runs it for every room, and the ORM's version of
    this query cost more Python to build than PostgreSQL took to run it."""
    payment_table = connection.ops.quote_name(Payment._meta.db_table)
    settlement_table = connection.ops.quote_name(Settlement._meta.db_table)
    sql = (
        f"SELECT {columns(Payment, 'payment')}, {columns(Settlement, 'settlement')}"  # noqa: S608 - names from the models; values are parameters
        f" FROM {payment_table} payment"
        f" LEFT JOIN {settlement_table} settlement ON settlement.payment_id = payment.id"
        f" WHERE payment.id IN ({ids_sql}) ORDER BY payment.id FOR UPDATE OF payment"
    )
    with cursor_prepared() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    locked: dict[int, Payment] = {}
    for row in rows:
        payment, at = load(Payment, row)
        # As select_related leaves them: the settlement (or its absence) known to the payment.
        settlement = None if row[at] is None else load(Settlement, row, at)[0]
        Payment.settlement.related.set_cached_value(payment, settlement)
        if settlement is not None:
            Settlement.payment.field.set_cached_value(settlement, payment)
        locked[payment.pk] = payment
    return locked


def payment_settle(
    payment: Payment,
    *,
    amount_minor: int,
    currency: str,
    rule: str,
    inputs: dict[str, Any],
    explanation: str,
    actor: User | None = None,
    locked: bool = False,
) -> Settlement:
    """Decide what the payment finally costs, inside the caller's transaction, and write the
    capture (amount > 0) or cancel (0) command. The first settlement stands: settling again
    returns it unchanged, so a room closed twice captures once.

    `locked`: `payment` is the caller's own row from `payments_lock` in the transaction that is
    open now (the room close settles every seat under the locks it took first), so it is
    neither locked nor read again; it is updated in place.
    """
    if locked:
        if not transaction.get_connection().in_atomic_block:
            raise BillingError("A payment locked by the caller is settled inside its transaction.")
        return _payment_settle(payment, amount_minor, currency, rule, inputs, explanation, actor)
    with transaction.atomic():
        held = Payment.objects.select_for_update(of=("self",)).select_related("settlement")
        settlement = _payment_settle(
            held.get(pk=payment.pk), amount_minor, currency, rule, inputs, explanation, actor
        )
    payment.refresh_from_db()
    return settlement


def _payment_settle(
    locked: Payment,
    amount_minor: int,
    currency: str,
    rule: str,
    inputs: dict[str, Any],
    explanation: str,
    actor: User | None,
) -> Settlement:
    """`payment_settle` on a payment whose row lock the caller holds, read with its
    settlement (`select_related`): a settlement already there stands."""
    existing: Settlement | None = getattr(locked, "settlement", None)
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
    settlement = Settlement(
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
    settled = payment_event_new(
        locked, "settled", actor, amount_minor, rule=rule, explanation=explanation
    )
    # The settlement is written with the command it decides (one statement on PostgreSQL).
    if amount_minor > 0:
        command_write(
            locked,
            CommandKind.CAPTURE,
            amount_minor,
            f"settlement: {rule}",
            written_with=settled,
            decided_by=settlement,
        )
    else:
        _payment_release(locked, f"settlement: {rule}", written_with=settled, decided_by=settlement)
    # The caller's instance knows it is settled now: a second settle stands on this one.
    locked.settlement = settlement
    return settlement


def payment_settle_call(
    payment: Payment,
    *,
    pricing: str,
    price_minor: int,
    cap_minor: int,
    connected_seconds: int,
    billable_seconds: int,
    outcome: str = "completed",
    no_show_fee_percent: int = 0,
    currency: str,
    actor: User | None = None,
    locked: bool = False,
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
            connected_seconds=connected_seconds,
            billable_seconds=billable_seconds,
            outcome=outcome,
            no_show_fee_percent=no_show_fee_percent,
            currency=currency,
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
            "connected_seconds": connected_seconds,
            "billable_seconds": billable_seconds,
            "outcome": outcome,
            "no_show_fee_percent": no_show_fee_percent,
            "rounding": "every started minute" if pricing == "per_minute" else "none",
        },
        explanation=charge.explanation,
        actor=actor,
        locked=locked,
    )


def payment_release(
    payment: Payment, *, reason: str, actor: User | None = None, locked: bool = False
) -> Settlement:
    """Nothing is owed (cancellation in time, expert canceled, reservation expired): the hold,
    if any, is canceled. Inside the caller's transaction (`locked`: see `payment_settle`)."""
    return payment_settle(
        payment,
        amount_minor=0,
        currency=payment.currency,
        rule="released",
        inputs={"reason": reason},
        explanation=f"Released in full: {reason}.",
        actor=actor,
        locked=locked,
    )


def _payment_release(
    payment: Payment, reason: str, *, written_with: PaymentEvent, decided_by: Settlement
) -> None:
    if payment.intent_id:
        command_write(
            payment,
            CommandKind.CANCEL,
            0,
            reason,
            written_with=written_with,
            decided_by=decided_by,
        )
        return
    decided_by.save(force_insert=True)
    written_with.save()
    if payment.state in UNPAID_STATES:
        # Nothing exists at the provider to cancel (the card was never asked for, or only
        # saved for later): the payment ends here.
        old, payment.state = payment.state, PaymentState.CANCELED
        payment.save(update_fields=["state", "updated_at"])
        payment_event_write(payment, PaymentState.CANCELED, None, 0, old=old, reason=reason)


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
        if _chargeback_holds(payment):
            raise PaymentRefused(
                "The card's bank has a chargeback on this payment: the money is with the bank "
                "(or was returned by it), so a refund here would pay the client twice."
            )
        if amount_minor > payment.refundable_minor:
            raise PaymentRefused(
                f"At most {format_money(payment.refundable_minor, currency)} can be refunded "
                f"(charged {format_money(payment.captured_minor, currency)}, already refunded "
                f"{format_money(payment.refunded_minor, currency)})."
            )
        payment.refunded_minor += amount_minor
        payment.save(update_fields=["refunded_minor", "updated_at"])
        command = command_write(payment, CommandKind.REFUND, amount_minor, reason)
        payment_event_write(
            payment, "refund_decided", actor, amount_minor, reason=reason, command=command.pk
        )
    return command


def _chargeback_holds(payment: Payment) -> bool:
    """A chargeback is open on the payment, or was lost: the bank has the money."""
    opened, closed = set(), {}
    for kind, data in payment.events.filter(
        kind__in=("dispute_opened", "dispute_closed")
    ).values_list("kind", "data"):
        if kind == "dispute_opened":
            opened.add(data.get("dispute"))
        else:
            closed[data.get("dispute")] = data.get("status")
    return any(closed.get(dispute, "lost") == "lost" for dispute in opened)
