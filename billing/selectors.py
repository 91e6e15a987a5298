"""Reads of billing that other layers need."""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Prefetch
from django.utils import timezone

from accounts.models import User
from billing.models import (
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
    PayoutAccount,
    Settlement,
)
from billing.pricing import FREE_SECONDS, call_charge_of, format_money, payout_after_refunds


def hold_valid_until(payment: Payment) -> datetime | None:
    """Until when an authorized hold can safely be captured (card holds lapse after ~7 days);
    None when the payment holds nothing yet."""
    if payment.state != PaymentState.AUTHORIZED:
        return None
    authorized = payment.events.filter(kind=PaymentState.AUTHORIZED).order_by("pk").first()
    if authorized is None:
        return None
    authorized_at: datetime = authorized.created_at
    return authorized_at + timedelta(days=settings.HOLD_LATER_AFTER_DAYS)


def dispute_window_ends(settlement: Settlement) -> datetime:
    """Until when the client may dispute a settled charge: DISPUTE_WINDOW_HOURS after it was
    settled, and never past the moment its payout may leave for the expert."""
    window_end: datetime = settlement.created_at + timedelta(hours=settings.DISPUTE_WINDOW_HOURS)
    payout_due: datetime = settlement.payout_due_at
    return min(window_end, payout_due)


@dataclass(frozen=True)
class Earning:
    """One settled session as its expert is paid for it: after refunds, chargebacks and the fee."""

    settlement: Settlement
    session: str
    client: str
    starts_at: datetime | None
    settled_at: datetime
    currency: str
    charged_minor: int
    refunded_minor: int
    fee_minor: int
    # What is paid (or will be) to the expert; 0 when a chargeback took the charge back.
    share_minor: int
    # Counted apart: a dispute or a chargeback is open, its outcome decides the payout.
    held: bool
    status: str


@dataclass
class EarningMonth:
    month: datetime
    currency: str
    rows: list[Earning]
    charged_minor: int = 0
    refunded_minor: int = 0
    fee_minor: int = 0
    share_minor: int = 0
    held_minor: int = 0


def _chargeback(payment: Payment) -> str:
    """ "open", "lost" or "" for the card bank's disputes on the payment (a chargeback won or
    an inquiry closed without one leaves the charge with Parley)."""
    opened, closed = [], {}
    for event in payment.dispute_events:  # type: ignore[attr-defined]
        if event.kind == "dispute_opened":
            opened.append(event.data.get("dispute"))
        else:
            closed[event.data.get("dispute")] = event.data.get("status")
    if any(closed.get(dispute) == "lost" for dispute in opened):
        return "lost"
    if any(dispute not in closed for dispute in opened):
        return "open"
    return ""


def earnings_of_payee(user: User) -> list[Earning]:
    """An expert's settled sessions, newest first, each with what will be paid for it."""
    settlements = (
        Settlement.objects.filter(payment__payee=user, amount_minor__gt=0)
        .select_related("payment", "payment__payer", "payment__payee")
        .prefetch_related(
            Prefetch(
                "payment__commands",
                queryset=PaymentCommand.objects.filter(kind=CommandKind.TRANSFER).order_by("pk"),
                to_attr="transfers",
            ),
            Prefetch(
                "payment__events",
                queryset=PaymentEvent.objects.filter(
                    kind__in=("dispute_opened", "dispute_closed")
                ).order_by("pk"),
                to_attr="dispute_events",
            ),
        )
    )
    payable = PayoutAccount.objects.filter(user=user, payouts_enabled=True).exists()
    return [_earning(settlement, user, payable) for settlement in settlements]


def _earning(settlement: Settlement, user: User, payable: bool) -> Earning:
    payment = settlement.payment
    refunded = min(payment.refunded_minor, settlement.amount_minor)
    share = payout_after_refunds(
        payout_minor=settlement.payout_minor,
        refunded_minor=refunded,
        fee_percent=settings.PLATFORM_FEE_PERCENT,
    )
    fee = settlement.amount_minor - refunded - share
    chargeback = _chargeback(payment)
    transfers: list[PaymentCommand] = payment.transfers  # type: ignore[attr-defined]
    sent = next((t for t in reversed(transfers) if t.state != CommandState.FAILED), None)
    held = False
    if sent is not None and sent.state == CommandState.SUCCEEDED:
        # What went out is what was paid, whatever the card's bank decided after.
        share = sent.amount_minor
        status = f"Paid {timezone.localtime(sent.finished_at or sent.created_at):%-d %b %Y}"
    elif chargeback == "lost":
        share, status = 0, "Nothing: the card's bank returned the charge to the client"
    elif sent is not None:
        share, status = sent.amount_minor, "Being sent to your account"
    elif chargeback == "open":
        held, status = True, "Held: the card's bank is deciding a chargeback"
    elif settlement.payout_held:
        held, status = True, "Held: a dispute is open"
    elif share == 0:
        status = "Nothing: refunded in full"
    elif transfers:
        status = "Transfer failed; sent again once your payout account is updated"
    else:
        status = f"Due {timezone.localtime(settlement.payout_due_at):%-d %b %Y, %H:%M}"
        if not payable:
            status += "; connect your payout account to be paid"
    return Earning(
        settlement=settlement,
        session=payment_subject(payment, user),
        client=payment.payer.display_name,
        starts_at=payment.starts_at,
        settled_at=settlement.created_at,
        currency=settlement.currency,
        charged_minor=settlement.amount_minor,
        refunded_minor=refunded,
        fee_minor=fee,
        share_minor=share,
        held=held,
        status=status,
    )


def earnings_by_month(earnings: list[Earning]) -> list[EarningMonth]:
    """Earnings grouped by the month (in the current zone) they were settled in, per currency,
    with the month's totals; newest month first."""
    months: dict[tuple[datetime, str], EarningMonth] = {}
    for earning in earnings:
        local = timezone.localtime(earning.settled_at)
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        month = months.setdefault(
            (first, earning.currency), EarningMonth(first, earning.currency, [])
        )
        month.rows.append(earning)
        month.charged_minor += earning.charged_minor
        month.refunded_minor += earning.refunded_minor
        month.fee_minor += earning.fee_minor
        if earning.held:
            month.held_minor += earning.share_minor
        else:
            month.share_minor += earning.share_minor
    return sorted(months.values(), key=lambda m: (m.month, m.currency), reverse=True)


def local_moment(moment: datetime, user: User) -> str:
    """A moment as `user` reads it, the zone named: "Monday 7 December 2026, 10:00
    (Europe/Berlin)". Emails have no viewer's zone activated, so the page and the email both
    say times through this."""
    local = moment.astimezone(zoneinfo.ZoneInfo(user.time_zone))
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} ({user.time_zone})"


def payment_subject(payment: Payment, viewer: User) -> str:
    """What the payment bought, as `viewer` says it: with the other person's name ("Architecture
    review with Erin Expert" for the client, "… with Carl Client" for the expert)."""
    other = payment.payee if viewer.pk == payment.payer_id else payment.payer
    return f"{payment.description} with {other.display_name}"


def settlement_explanation(settlement: Settlement) -> str:
    """Why a settlement is what it is, in money ("73 s connected → 2 started minutes × 1.00 EUR
    = 2.00 EUR."). Worked out again from the stored inputs, so settlements written before
    explanations spoke money read the same; anything that is not a call's charge keeps its
    stored sentence."""
    charge = call_charge_of(settlement.inputs, settlement.currency)
    if charge is None or charge.amount_minor != settlement.amount_minor:
        return settlement.explanation
    return charge.explanation


def pricing_rule(inputs: dict[str, Any], currency: str) -> str:
    """The rule the client agreed to at booking, from a call settlement's inputs."""
    try:
        price, cap = int(inputs["price_minor"]), int(inputs["cap_minor"])
    except (KeyError, TypeError, ValueError):
        return ""
    free = f"Under {FREE_SECONDS} seconds connected is free"
    if inputs.get("pricing") == "per_minute":
        return (
            f"{free}; then every started minute costs {format_money(price, currency)}, "
            f"at most {format_money(cap, currency)}."
        )
    return f"{free}; from {FREE_SECONDS} seconds the fixed price {format_money(price, currency)}."


@dataclass(frozen=True)
class RefundLine:
    when: str
    amount_minor: int
    reason: str


@dataclass(frozen=True)
class Receipt:
    """The facts of one charged payment, for the client's receipt page and email alike."""

    payment: Payment
    number: str
    what: str
    starts: str
    charged_at: str
    time_zone: str
    billable_seconds: int | None
    explanation: str
    rule: str
    currency: str
    held_minor: int
    charged_minor: int
    released_minor: int
    refunds: list[RefundLine]
    refunded_minor: int
    paid_minor: int


def receipt_number(payment: Payment) -> str:
    return f"P-{payment.pk:06d}"


def receipt_of(payment: Payment) -> Receipt | None:
    """The receipt of a payment that was charged; None while (or when) nothing was."""
    if payment.state != PaymentState.CAPTURED or payment.captured_minor == 0:
        return None
    payer = payment.payer
    settlement = Settlement.objects.filter(payment=payment).first()
    events = list(
        payment.events.filter(
            kind__in=(
                PaymentState.CAPTURED,
                "refund_decided",
                "refund_failed",
                "refunded_at_provider",
            )
        ).order_by("created_at", "pk")
    )
    captured = next((e for e in events if e.kind == PaymentState.CAPTURED), None)
    failed = {e.data.get("command") for e in events if e.kind == "refund_failed"}
    refunds = [
        RefundLine(
            when=local_moment(e.created_at, payer),
            amount_minor=e.amount_minor or 0,
            reason=str(e.data.get("reason") or "refunded at the payment provider"),
        )
        for e in events
        if e.kind in ("refund_decided", "refunded_at_provider")
        and (e.kind != "refund_decided" or e.data.get("command") not in failed)
    ]
    inputs = settlement.inputs if settlement else {}
    seconds = inputs.get("billable_seconds")
    return Receipt(
        payment=payment,
        number=receipt_number(payment),
        what=payment_subject(payment, payer),
        starts=local_moment(payment.starts_at, payer) if payment.starts_at else "",
        charged_at=local_moment(captured.created_at if captured else payment.updated_at, payer),
        time_zone=payer.time_zone,
        billable_seconds=int(seconds) if isinstance(seconds, int) else None,
        explanation=settlement_explanation(settlement) if settlement else "",
        rule=pricing_rule(inputs, payment.currency),
        currency=payment.currency,
        held_minor=payment.authorized_minor,
        charged_minor=payment.captured_minor,
        released_minor=payment.released_minor,
        refunds=refunds,
        refunded_minor=payment.refunded_minor,
        paid_minor=payment.captured_minor - payment.refunded_minor,
    )
