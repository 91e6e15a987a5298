"""Disputes: a client's claim against a settled seat, or a chargeback from the card's bank.

While a dispute is open, the payout to the expert is held (billing's `payout_hold`). Staff
resolve a client's dispute with a full or partial refund — written as billing's refund
command in the same transaction, sent to the provider after commit — or a rejection, with a
note the client reads. A chargeback is decided by the bank: its outcome arrives by webhook.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import email_queue
from billing import selectors as billing_selectors
from billing import services as billing
from billing.errors import BillingError
from billing.models import CommandKind, CommandState, Payment, PaymentCommand, Settlement
from billing.pricing import format_money
from moderation.models import (
    DISPUTE_TRANSITIONS,
    Dispute,
    DisputeReason,
    DisputeSource,
    DisputeState,
    StaffActionKind,
)
from moderation.services.errors import ModerationError
from moderation.services.staff import staff_action_write, staff_check
from rooms.models import Seat
from rooms.services.records import room_event_write

logger = logging.getLogger(__name__)


class Outcome:
    REFUND_FULL = "refund_full"
    REFUND_PARTIAL = "refund_partial"
    REJECT = "reject"
    ALL = (REFUND_FULL, REFUND_PARTIAL, REJECT)


def dispute_deadline(settlement: Settlement) -> datetime:
    return billing_selectors.dispute_window_ends(settlement)


def dispute_open(
    seat_id: int, client: User, *, reason: str, text: str, now: datetime | None = None
) -> Dispute:
    """The client disputes what their seat cost, within DISPUTE_WINDOW_HOURS of the settlement;
    the room's payout to the expert is held until staff decide."""
    if reason not in DisputeReason.values or reason == DisputeReason.CHARGEBACK:
        raise ModerationError("Choose what went wrong.")
    text = text.strip()
    if not text:
        raise ModerationError("Say what happened: staff decide from what you write.")
    seat = Seat.objects.select_related("room").filter(pk=seat_id, client=client).first()
    if seat is None or seat.payment_id is None:
        raise ModerationError("You can only dispute your own paid bookings.")
    with transaction.atomic():
        billing.payments_lock([seat.payment_id])
        # Read the time after the lock: a payout sweep holding it decided with its own clock.
        now = now or timezone.now()
        settlement = Settlement.objects.filter(payment_id=seat.payment_id).first()
        if settlement is None:
            raise ModerationError("This session has not been settled yet; there is no charge.")
        if settlement.amount_minor == 0:
            raise ModerationError(
                "Nothing was charged for this session, so there is nothing to dispute."
            )
        deadline = dispute_deadline(settlement)
        if now > deadline:
            raise ModerationError(
                f"Charges can be disputed for {settings.DISPUTE_WINDOW_HOURS} hours after the "
                f"session; the time for this one ended on {deadline:%Y-%m-%d %H:%M} UTC. "
                "Contact support if something is still wrong."
            )
        if Dispute.objects.filter(seat=seat, source=DisputeSource.CLIENT).exists():
            raise ModerationError("You have already disputed this charge; its status is below.")
        try:
            with transaction.atomic():
                dispute = Dispute.objects.create(
                    seat=seat,
                    payment_id=seat.payment_id,
                    client=client,
                    source=DisputeSource.CLIENT,
                    reason=reason,
                    text=text,
                    charged_minor=settlement.amount_minor,
                    currency=settlement.currency,
                    created_at=now,
                )
        except IntegrityError:
            raise ModerationError(
                "You have already disputed this charge; its status is below."
            ) from None
        billing.payout_hold(seat.payment_id, reason=f"dispute {dispute.pk} opened by the client")
        room_event_write(
            seat.room, "disputed", client, dispute=dispute.pk, seat=seat.pk, reason=reason
        )
    return dispute


def dispute_resolve(
    dispute_id: int,
    *,
    actor: User,
    outcome: str,
    note: str,
    refund_minor: int | None = None,
) -> Dispute:
    """Staff decide a client's dispute: a full refund, a partial refund (more than zero, at
    most what is still refundable) or a rejection, with a note the client reads. All of it —
    the refund command, the dispute's outcome, the staff action, the lifted payout hold and
    the client's email — commits together or not at all."""
    note = staff_check(actor, note)
    if outcome not in Outcome.ALL:
        raise ModerationError("Choose a full refund, a partial refund or a rejection.")
    payment_id = Dispute.objects.values_list("payment_id", flat=True).filter(pk=dispute_id).first()
    if payment_id is None:
        raise ModerationError("There is no such dispute.")
    with transaction.atomic():
        billing.payments_lock([payment_id])
        dispute = (
            Dispute.objects.select_for_update()
            .select_related("seat__room", "client")
            .get(pk=dispute_id)
        )
        if dispute.state != DisputeState.OPEN:
            raise ModerationError(
                f"This dispute is already decided ({dispute.get_state_display().lower()}, "
                f"{dispute.resolved_at:%Y-%m-%d %H:%M} UTC); it cannot be decided again."
            )
        if dispute.source == DisputeSource.CHARGEBACK:
            raise ModerationError(
                "A chargeback is decided by the card's bank, not here: its outcome arrives "
                "from the payment provider. Answer it with evidence in the provider's dashboard."
            )
        if actor.pk in (dispute.client_id, dispute.seat.room.expert_id):
            raise ModerationError(
                "You are the client or the expert of this session; another staff member "
                "decides its dispute."
            )
        payment = Payment.objects.get(pk=payment_id)
        amount = _refund_amount(outcome, payment, refund_minor)
        command = None
        if amount:
            # payment_refund also refuses while the card's bank holds a chargeback.
            try:
                command = billing.payment_refund(
                    payment.pk,
                    amount_minor=amount,
                    currency=payment.currency,
                    reason=f"dispute {dispute.pk}: {note}",
                    actor=actor,
                )
            except BillingError as refused:
                raise ModerationError(str(refused)) from None
        state = {
            Outcome.REFUND_FULL: DisputeState.REFUNDED,
            Outcome.REFUND_PARTIAL: DisputeState.PARTIALLY_REFUNDED,
            Outcome.REJECT: DisputeState.REJECTED,
        }[outcome]
        if state == DisputeState.PARTIALLY_REFUNDED and amount == payment.refundable_minor:
            state = DisputeState.REFUNDED  # "part" of the charge was all that was left of it
        _dispute_decide(
            dispute, state, note=note, actor=actor, refund_minor=amount, refund_command=command
        )
        staff_action_write(
            actor,
            StaffActionKind.DISPUTE_RESOLVE,
            note,
            dispute=dispute,
            room=dispute.seat.room,
            subject=dispute.client,
            data={"outcome": outcome, "refund_minor": amount, "currency": payment.currency},
        )
        email_queue(
            key=f"dispute-decided:{dispute.pk}",
            to=dispute.client.email,
            subject="Your dispute has been decided",
            template="moderation/email/dispute_decided.txt",
            context={"dispute": dispute, "refund": format_money(amount, payment.currency)},
        )
    return dispute


def _refund_amount(outcome: str, payment: Payment, refund_minor: int | None) -> int:
    refundable = payment.refundable_minor
    if outcome == Outcome.REJECT:
        return 0
    if outcome == Outcome.REFUND_FULL:
        if refundable <= 0:
            raise ModerationError("Nothing is left to refund on this payment.")
        return refundable
    if refund_minor is None or refund_minor <= 0:
        raise ModerationError("Give the amount to refund: more than zero.")
    if refund_minor > refundable:
        raise ModerationError(
            f"At most {format_money(refundable, payment.currency)} can be refunded "
            f"(charged {format_money(payment.captured_minor, payment.currency)}, already "
            f"refunded {format_money(payment.refunded_minor, payment.currency)})."
        )
    return refund_minor


def _dispute_decide(
    dispute: Dispute,
    state: str,
    *,
    note: str,
    actor: User | None,
    refund_minor: int = 0,
    refund_command: PaymentCommand | None = None,
) -> None:
    """Move an open dispute to its outcome (a conditional UPDATE: decided once), then let the
    payout go unless another dispute on the payment is still open or the bank took the money."""
    now = timezone.now()
    _dispute_transition(
        dispute,
        state,
        resolution_note=note,
        resolved_by=actor,
        resolved_at=now,
        refund_minor=refund_minor,
        refund_command=refund_command,
        refund_error="",
    )
    room_event_write(
        dispute.seat.room,
        "dispute_resolved",
        actor,
        dispute=dispute.pk,
        state=state,
        refund_minor=refund_minor,
    )
    still_open = Dispute.objects.filter(payment_id=dispute.payment_id, state=DisputeState.OPEN)
    lost = Dispute.objects.filter(payment_id=dispute.payment_id, state=DisputeState.CHARGEBACK_LOST)
    if not still_open.exists() and not lost.exists():
        billing.payout_hold_lift(
            dispute.payment_id, reason=f"dispute {dispute.pk} decided", actor=actor
        )


def _dispute_transition(dispute: Dispute, target: str, **fields: Any) -> None:
    """One guarded UPDATE from any state the table allows to `target`; a dispute that moved
    a moment ago (decided by a colleague) is refused, not overwritten."""
    sources = [state for state, targets in DISPUTE_TRANSITIONS.items() if target in targets]
    changed = Dispute.objects.filter(pk=dispute.pk, state__in=sources).update(
        state=target, **fields
    )
    if changed != 1:
        raise ModerationError("This dispute was decided a moment ago by someone else.")
    dispute.state = target
    for name, value in fields.items():
        setattr(dispute, name, value)


def dispute_refund_failed(payment: Payment, *, command_id: int, error: str) -> Dispute | None:
    """The provider refused the refund a decision sent: the client did not get the money, so
    the dispute opens again for staff (with the provider's answer), the payout is held again,
    and the client is told. None when the refund was not a dispute's. Inside billing's
    transaction (its signal)."""
    dispute = (
        Dispute.objects.select_for_update()
        .select_related("seat__room", "client")
        .filter(refund_command_id=command_id)
        .first()
    )
    if dispute is None or dispute.state not in (
        DisputeState.REFUNDED,
        DisputeState.PARTIALLY_REFUNDED,
    ):
        return dispute
    refund = format_money(dispute.refund_minor, dispute.currency)
    decided_by = dispute.resolved_by_id
    _dispute_transition(
        dispute,
        DisputeState.OPEN,
        resolution_note="",
        resolved_by=None,
        resolved_at=None,
        refund_minor=0,
        refund_error=error[:300],
    )
    room_event_write(
        dispute.seat.room,
        "dispute_refund_failed",
        None,
        dispute=dispute.pk,
        command=command_id,
        refund=refund,
        decided_by=decided_by,
        error=error,
    )
    billing.payout_hold(payment.pk, reason=f"dispute {dispute.pk}: its refund failed")
    email_queue(
        key=f"dispute-refund-failed:{dispute.pk}:{command_id}",
        to=dispute.client.email,
        subject="Your refund did not go through",
        template="moderation/email/dispute_refund_failed.txt",
        context={"dispute": dispute, "refund": refund},
    )
    return dispute


def dispute_open_chargeback(
    payment: Payment, *, provider_dispute_id: str, reason: str
) -> Dispute | None:
    """The card's bank opened a chargeback on a seat's payment (billing has already held the
    payout). Once per chargeback id; None when the payment is not a seat's."""
    seat = Seat.objects.select_related("room").filter(payment=payment).first()
    if seat is None:
        return None
    existing = Dispute.objects.filter(provider_dispute_id=provider_dispute_id).first()
    if existing is not None:
        return existing
    paid_out = (
        PaymentCommand.objects.filter(payment=payment, kind=CommandKind.TRANSFER)
        .exclude(state=CommandState.FAILED)
        .first()
    )
    # Too late to hold: if the bank keeps the money, it is Parley's loss unless the expert's
    # share is recovered, so staff see it on the dispute itself.
    late = (
        f" The expert's payout of {format_money(paid_out.amount_minor, payment.currency)} "
        "had already been sent when the chargeback arrived."
        if paid_out is not None
        else ""
    )
    dispute = Dispute.objects.create(
        seat=seat,
        payment=payment,
        client_id=seat.client_id,
        source=DisputeSource.CHARGEBACK,
        reason=DisputeReason.CHARGEBACK,
        text=f"The card's bank gives the reason: {reason or 'none given'}.{late}",
        provider_dispute_id=provider_dispute_id,
        charged_minor=payment.captured_minor,
        currency=payment.currency,
    )
    room_event_write(
        seat.room, "disputed", None, dispute=dispute.pk, seat=seat.pk, reason="chargeback"
    )
    return dispute


# Stripe's closing statuses: the merchant kept the money (won, or an inquiry that never became
# a chargeback) or the card holder got it back (lost).
CHARGEBACK_OUTCOMES = {
    "won": DisputeState.CHARGEBACK_WON,
    "warning_closed": DisputeState.CHARGEBACK_WON,
    "lost": DisputeState.CHARGEBACK_LOST,
    # Stopped before it became a chargeback by refunding the card holder (Visa RDR), and the
    # older name of the same: the money went back to the card.
    "prevented": DisputeState.CHARGEBACK_LOST,
    "charge_refunded": DisputeState.CHARGEBACK_LOST,
}


def dispute_chargeback_closed(
    payment: Payment, *, provider_dispute_id: str, status: str
) -> Dispute | None:
    """The bank decided: record the outcome. Won: the payout goes out as usual (if nothing else
    holds it). Lost: the money went back to the card holder, so the payout stays held."""
    state = CHARGEBACK_OUTCOMES.get(status)
    dispute = (
        Dispute.objects.select_for_update()
        .select_related("seat__room")
        .filter(provider_dispute_id=provider_dispute_id)
        .first()
    )
    if dispute is None or dispute.state != DisputeState.OPEN:
        return dispute
    if state == DisputeState.CHARGEBACK_WON:
        note = "The card's bank decided the chargeback for Parley; the charge stands."
    elif state == DisputeState.CHARGEBACK_LOST:
        note = "The card's bank decided the chargeback for the card holder and returned the money."
    else:
        # Closed, but with a status this code does not know: decided as the safe reading
        # (the money may have gone back, so the payout stays held), saying so for staff.
        logger.error("chargeback %s closed with an unknown status %r", provider_dispute_id, status)
        state = DisputeState.CHARGEBACK_LOST
        note = (
            f"The card's bank closed the chargeback with the status {status!r}, which Parley "
            "does not recognise: the payout stays held. Check the outcome in the payment "
            "provider's dashboard."
        )
    _dispute_decide(dispute, state, note=note, actor=None)
    return dispute
