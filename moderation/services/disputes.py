"""Disputes: a client's claim against a settled seat, or a chargeback from the card's bank.

While a dispute is open, the payout to the expert is held (billing's `payout_hold`). Staff
resolve a client's dispute with a full or partial refund — written as billing's refund
command in the same transaction, sent to the provider after commit — or a rejection, with a
note the client reads. A chargeback is decided by the bank: its outcome arrives by webhook.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from accounts.services import email_queue
from billing import services as billing
from billing.errors import BillingError
from billing.models import Payment, Settlement
from billing.pricing import format_money
from moderation.models import (
    Dispute,
    DisputeReason,
    DisputeSource,
    DisputeState,
    StaffActionKind,
)
from moderation.services.errors import ModerationError
from moderation.services.staff import staff_action_write, staff_check
from rooms.models import Seat
from rooms.services.records import event_write

logger = logging.getLogger(__name__)


class Outcome:
    REFUND_FULL = "refund_full"
    REFUND_PARTIAL = "refund_partial"
    REJECT = "reject"
    ALL = (REFUND_FULL, REFUND_PARTIAL, REJECT)


def dispute_deadline(settlement: Settlement) -> datetime:
    return settlement.created_at + timedelta(hours=settings.DISPUTE_WINDOW_HOURS)


def dispute_open(
    seat_id: int, client: User, *, reason: str, text: str, now: datetime | None = None
) -> Dispute:
    """The client disputes what their seat cost, within DISPUTE_WINDOW_HOURS of the settlement;
    the room's payout to the expert is held until staff decide."""
    now = now or timezone.now()
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
        event_write(seat.room, "disputed", client, dispute=dispute.pk, seat=seat.pk, reason=reason)
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
        payment = Payment.objects.get(pk=payment_id)
        amount = _refund_amount(outcome, payment, refund_minor)
        if amount:
            # payment_refund also refuses while the card's bank holds a chargeback.
            try:
                billing.payment_refund(
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
        _dispute_decide(dispute, state, note=note, actor=actor, refund_minor=amount)
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
    dispute: Dispute, state: str, *, note: str, actor: User | None, refund_minor: int = 0
) -> None:
    """Move an open dispute to its outcome (a conditional UPDATE: decided once), then let the
    payout go unless another dispute on the payment is still open or the bank took the money."""
    now = timezone.now()
    changed = Dispute.objects.filter(pk=dispute.pk, state=DisputeState.OPEN).update(
        state=state,
        resolution_note=note,
        resolved_by=actor,
        resolved_at=now,
        refund_minor=refund_minor,
    )
    if changed != 1:
        raise ModerationError("This dispute was decided a moment ago by someone else.")
    dispute.state, dispute.resolution_note, dispute.resolved_by = state, note, actor
    dispute.resolved_at, dispute.refund_minor = now, refund_minor
    event_write(
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
    dispute = Dispute.objects.create(
        seat=seat,
        payment=payment,
        client_id=seat.client_id,
        source=DisputeSource.CHARGEBACK,
        reason=DisputeReason.CHARGEBACK,
        text=f"The card's bank gives the reason: {reason or 'none given'}.",
        provider_dispute_id=provider_dispute_id,
        charged_minor=payment.captured_minor,
        currency=payment.currency,
    )
    event_write(seat.room, "disputed", None, dispute=dispute.pk, seat=seat.pk, reason="chargeback")
    return dispute


# Stripe's closing statuses: the merchant kept the money (won, or an inquiry that never became
# a chargeback) or the card holder got it back (lost).
CHARGEBACK_OUTCOMES = {
    "won": DisputeState.CHARGEBACK_WON,
    "warning_closed": DisputeState.CHARGEBACK_WON,
    "lost": DisputeState.CHARGEBACK_LOST,
}


def dispute_chargeback_closed(
    payment: Payment, *, provider_dispute_id: str, status: str
) -> Dispute | None:
    """The bank decided: record the outcome. Won: the payout goes out as usual (if nothing else
    holds it). Lost: the money went back to the card holder, so the payout stays held."""
    state = CHARGEBACK_OUTCOMES.get(status)
    if state is None:
        logger.error(
            "chargeback %s closed with an unknown status %r; its dispute stays open for staff",
            provider_dispute_id,
            status,
        )
    dispute = (
        Dispute.objects.select_for_update()
        .select_related("seat__room")
        .filter(provider_dispute_id=provider_dispute_id)
        .first()
    )
    if dispute is None or state is None or dispute.state != DisputeState.OPEN:
        return dispute
    note = (
        "The card's bank decided the chargeback for Parley; the charge stands."
        if state == DisputeState.CHARGEBACK_WON
        else "The card's bank decided the chargeback for the card holder and returned the money."
    )
    _dispute_decide(dispute, state, note=note, actor=None)
    return dispute
