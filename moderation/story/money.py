"""The money's records as entries: settlements, payment commands, payment events and the
provider's webhooks; and the header's seats and totals."""

from __future__ import annotations

from collections import Counter

from billing.models import (
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
)
from moderation.models import Dispute
from moderation.story.entries import Entry, Fact, Link, SeatSummary
from moderation.story.load import Records, settlement_of
from moderation.story.payloads import Intervals, Payload
from moderation.story.words import Teller, choice, duration_text, label
from rooms.models import SeatState

WEBHOOK_TITLES = {
    "payment_intent.amount_capturable_updated": "Provider: the hold is placed",
    "payment_intent.succeeded": "Provider: the payment is charged",
    "payment_intent.canceled": "Provider: the hold is released",
    "payment_intent.payment_failed": "Provider: the card was declined",
    "charge.refunded": "Provider: a refund went through",
    "charge.dispute.created": "Provider: the card's bank opened a chargeback",
    "charge.dispute.closed": "Provider: a chargeback was decided",
    "refund.failed": "Provider: a refund failed",
    "refund.updated": "Provider: a refund changed",
    "charge.refund.updated": "Provider: a refund changed",
    "setup_intent.succeeded": "Provider: the card is saved",
}
COMMAND_TITLES: dict[str, str] = {
    CommandKind.CAPTURE: "Capture {amount} requested",
    CommandKind.CANCEL: "Release of the hold requested",
    CommandKind.REFUND: "Refund of {amount} requested",
    CommandKind.TRANSFER: "Transfer of {amount} to the expert requested",
}
# Payment events that are the payment's state moving: titled by the state they reach.
PAYMENT_STATE_TITLES: dict[str, str] = {
    PaymentState.AUTHORIZED: "Hold placed: {amount}",
    PaymentState.CAPTURED: "Charged: {amount}",
    PaymentState.CANCELED: "Hold released",
    PaymentState.CARD_SAVED: "Card saved; the hold is placed later",
}
PAYMENT_EVENT_TITLES = {
    "opened": "Payment opened: hold of {amount} asked for",
    "intent_created": "Provider PaymentIntent created",
    "setup_created": "Provider SetupIntent created (to save the card)",
    "customer_created": "Provider customer created",
    "authorization_failed": "The card was refused",
    "authorized_late": "Hold placed after the purchase had ended",
    "refund_decided": "Refund of {amount} decided",
    "refunded_at_provider": "Refunded at the provider's dashboard: {amount}",
    "dispute_opened": "Chargeback opened by the card's bank: {amount}",
    "dispute_closed": "Chargeback closed",
    "payout_held": "Payout to the expert held",
    "payout_released": "Payout to the expert released",
    "payout_hold_too_late": "Payout hold asked for, but the payout was already sent",
}


def settlement_entries(records: Records, teller: Teller) -> list[Entry]:
    meters = {
        seat.seat: seat
        for row in records.room_events
        if row.record.kind == "closed"
        for seat in row.data.seats
        if seat.seat is not None
    }
    entries = []
    for seat in records.seats:
        if seat.pk not in records.settlements:
            continue
        settlement, inputs = records.settlements[seat.pk].record, records.settlements[seat.pk].data
        amount = teller.money(settlement.amount_minor, settlement.currency)
        facts = [Fact("Amount", amount), Fact("Rule", settlement.rule)]
        if (billable := inputs.value("billable_seconds")) is not None:
            facts.append(Fact("Billable time", teller.value(billable)))
        fee = teller.money(settlement.platform_fee_minor, settlement.currency)
        payout = teller.money(settlement.payout_minor, settlement.currency)
        due = teller.clock(settlement.payout_due_at, settlement.created_at)
        facts += [
            Fact("Why", settlement.explanation),
            Fact("Split", f"platform fee {fee}, expert {payout}"),
            Fact("Payout", f"due {due}" + (" — held" if settlement.payout_held else "")),
            Fact("Inputs", lines=tuple(f"{f.label}: {f.value}" for f in teller.facts(inputs))),
        ]
        # What the close measured: the inputs say how the amount follows from the billable
        # time; these say where that came from.
        meter = meters.get(seat.pk, Payload())
        for key in ("booked", "live_window", "expert_presence", "client_presence", "media_links"):
            if isinstance(intervals := meter.value(key), Intervals):
                facts.append(
                    Fact(f"Metered: {label(key).lower()}", lines=teller.intervals(intervals))
                )
        entries.append(
            Entry(
                at=settlement.created_at,
                category="settlement",
                title=f"Settled the seat of {teller.name(seat.client_id, email=False)}: {amount}",
                facts=tuple(facts),
                links=(teller.payment_link(settlement.payment_id),),
                tone="warn" if settlement.payout_held else "",
                pk=settlement.pk,
            )
        )
    return entries


def command_entries(records: Records, teller: Teller) -> list[Entry]:
    # A refund's "refund_decided" event carries who decided it: told with its command.
    deciders = {
        row.data.command: row.record.actor_id
        for row in records.payment_events
        if row.record.kind == "refund_decided" and row.data.command is not None
    }
    return [
        _command_entry(command, deciders.get(command.pk), records, teller)
        for command in records.commands
    ]


def _command_entry(
    command: PaymentCommand, decider: int | None, records: Records, teller: Teller
) -> Entry:
    payment = records.payments.get(command.payment_id)
    amount = teller.money(command.amount_minor, payment.currency if payment else None)
    title = COMMAND_TITLES.get(command.kind, f"{command.kind} {{amount}}").format(amount=amount)
    if command.state == CommandState.SUCCEEDED:
        outcome, tone = "done", "good"
    elif command.state == CommandState.FAILED:
        outcome, tone = "failed", "bad"
    else:
        outcome, tone = "waiting to be sent", "warn"
    if command.finished_at is not None:
        took = duration_text((command.finished_at - command.created_at).total_seconds())
        outcome += f" at {teller.clock(command.finished_at, command.created_at)} ({took} later)"
    elif command.state == CommandState.PENDING:
        outcome += f"; next attempt {teller.clock(command.next_attempt_at, command.created_at)}"
    facts = [
        Fact("Outcome", outcome),
        Fact("Attempts", str(command.attempts)),
        Fact("Reason", command.reason),
    ]
    if command.provider_ref:
        facts.append(Fact("Provider reference", command.provider_ref))
    if command.last_error:
        facts.append(Fact("Last error", command.last_error))
    if command.destination:
        facts.append(Fact("Destination", command.destination))
    return Entry(
        at=command.created_at,
        category="command",
        title=f"{title} — {command.get_state_display().lower()}",
        who=teller.person(decider),
        facts=tuple(facts),
        links=(
            teller.payment_link(command.payment_id),
            Link("billing_paymentcommand", command.pk, f"Command #{command.pk}"),
        ),
        tone=tone,
        pk=command.pk,
    )


def webhook_entries(records: Records, teller: Teller) -> list[Entry]:
    entries = []
    for row in records.webhooks:
        webhook, obj = row.record, row.data
        payment = next(
            (
                payment
                for payment in records.payments.values()
                if obj.ids & {payment.intent_id, payment.setup_id, payment.charge_id}
            ),
            None,
        )
        facts = [Fact("Type", webhook.type), Fact("Event id", webhook.event_id)]
        if obj.status:
            facts.append(Fact("Status at the provider", obj.status))
        if payment is not None:
            facts += [Fact(label(key), teller.money(v, payment.currency)) for key, v in obj.amounts]
        if webhook.processed_at is not None:
            processed = teller.clock(webhook.processed_at, webhook.received_at)
        else:
            processed = f"not yet ({webhook.attempts} attempts)"
        facts.append(Fact("Processed", processed))
        if webhook.last_error:
            facts.append(Fact("Last error", webhook.last_error))
        links = [Link("billing_webhookevent", webhook.pk, f"Webhook #{webhook.pk}")]
        if payment is not None:
            links.insert(0, teller.payment_link(payment.pk))
        entries.append(
            Entry(
                at=webhook.received_at,
                category="webhook",
                title=WEBHOOK_TITLES.get(webhook.type, f"Provider: {webhook.type}"),
                who_label=webhook.get_provider_display(),
                facts=tuple(facts),
                links=tuple(links),
                tone="bad" if webhook.last_error else "",
                pk=webhook.pk,
            )
        )
    return entries


def payment_event_entries(records: Records, teller: Teller) -> list[Entry]:
    """The payments' events, but those that repeat a settlement, a command or a chargeback
    shown on its own."""
    command_ids = {command.pk for command in records.commands}
    command_kinds = {(command.payment_id, command.kind) for command in records.commands}
    chargebacks = {dispute.provider_dispute_id for dispute in records.disputes} - {""}
    entries = []
    for row in records.payment_events:
        event, data = row.record, row.data
        payment = records.payments.get(event.payment_id)
        prefix = event.kind.rsplit("_", 1)[0]
        if payment is None:
            continue
        if event.kind == "settled" and settlement_of(payment) is not None:
            continue
        if event.kind.endswith("_requested") or event.kind == "refund_decided":
            if data.command in command_ids:
                continue
        elif event.kind.endswith(("_sent", "_failed")) and prefix in CommandKind.values:
            # These name no command; the payment's command of that kind shows its outcome.
            if (payment.pk, prefix) in command_kinds:
                continue
        elif event.kind in ("dispute_opened", "dispute_closed") and data.dispute in chargebacks:
            continue
        entries.append(_payment_event_entry(row.record, data, payment, teller))
    return entries


def _payment_event_entry(
    event: PaymentEvent, data: Payload, payment: Payment, teller: Teller
) -> Entry:
    amount = teller.money(event.amount_minor, payment.currency)
    template = PAYMENT_STATE_TITLES.get(event.kind) or PAYMENT_EVENT_TITLES.get(event.kind)
    title = (template or event.kind.replace("_", " ").capitalize()).format(amount=amount)
    moved = event.kind in PAYMENT_STATE_TITLES and data.value("old") is not None
    facts = teller.facts(data, skip=("intent", "old") if moved else ("intent",))
    if moved:
        facts.insert(0, Fact("From", choice(PaymentState, data.old)))
    if event.amount_minor is not None and "{amount}" not in (template or "{amount}"):
        facts.insert(0, Fact("Amount", amount))
    bad = event.kind.endswith("_failed") or event.kind.startswith("dispute")
    return Entry(
        at=event.created_at,
        category="payment",
        title=title,
        who=teller.person(event.actor_id),
        facts=tuple(facts),
        links=(teller.payment_link(event.payment_id),),
        tone="bad" if bad else "good" if event.kind == PaymentState.CAPTURED else "",
        pk=event.pk,
    )


def seat_summaries(records: Records, teller: Teller) -> tuple[SeatSummary, ...]:
    summaries = []
    for seat in records.seats:
        payment = seat.payment
        money: tuple[str, ...] = ()
        settled = "—"
        if payment is not None:
            # Held, authorized, charged, released, refunded.
            money = tuple(
                teller.money(amount, payment.currency)
                for amount in (
                    payment.amount_minor,
                    payment.authorized_minor,
                    payment.captured_minor,
                    payment.released_minor,
                    payment.refunded_minor,
                )
            )
        if seat.pk in records.settlements:
            settlement = records.settlements[seat.pk].record
            held = ", payout held" if settlement.payout_held else ""
            amount = teller.money(settlement.amount_minor, settlement.currency)
            settled = f"{amount} ({settlement.rule}){held}"
        rating = records.ratings.get(seat.client_id)
        summaries.append(
            SeatSummary(
                seat=seat,
                client=records.people[seat.client_id],
                state=SeatState(seat.state).label if seat.state in SeatState.values else seat.state,
                payment=payment,
                payment_state=payment.get_state_display() if payment else "no payment",
                money=money,
                settlement=settled,
                disputes=_disputes_in_short([d for d in records.disputes if d.seat_id == seat.pk]),
                rating=f"{rating.stars}★ {rating.comment}".strip() if rating else "",
            )
        )
    return tuple(summaries)


def _disputes_in_short(disputes: list[Dispute]) -> str:
    """A few by number; many (a run of chargebacks) counted by state."""
    if len(disputes) <= 3:
        return ", ".join(f"#{d.pk} {d.get_state_display().lower()}" for d in disputes)
    states = Counter(dispute.get_state_display().lower() for dispute in disputes)
    return ", ".join(f"{count} {state}" for state, count in states.items())


def totals(records: Records, teller: Teller) -> tuple[Fact, ...]:
    charged, refunded = Counter[str](), Counter[str]()
    for payment in records.payments.values():
        charged[payment.currency] += payment.captured_minor
        refunded[payment.currency] += payment.refunded_minor
    return tuple(
        Fact(
            f"Money ({c})",
            f"charged {teller.money(charged[c], c)}, refunded {teller.money(refunded[c], c)}, "
            f"kept {teller.money(charged[c] - refunded[c], c)}",
        )
        for c in sorted(charged)
    )
