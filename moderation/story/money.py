"""The money's records: settlements, payment commands, payment events and the provider's
webhooks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Q

from billing.models import (
    CommandKind,
    CommandState,
    Payment,
    PaymentCommand,
    PaymentEvent,
    PaymentState,
    Settlement,
    WebhookEvent,
)
from moderation.story.base import _BuilderBase
from moderation.story.records import Entry, Fact, Link
from moderation.story.words import (
    _is_interval_list,
    _label,
    _payment_state,
    clock_text,
    duration_text,
)
from rooms.models import Seat

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


def _webhooks_of(payments: list[Payment]) -> Iterable[WebhookEvent]:
    """The provider's events about these payments, in one query: webhook events have no
    foreign key, only the provider's ids inside the payload (Stripe's event JSON)."""
    ids = sorted(
        {
            value
            for payment in payments
            for value in (payment.intent_id, payment.setup_id, payment.charge_id)
            if value
        }
    )
    if not ids:
        return []
    return WebhookEvent.objects.filter(
        Q(payload__data__object__id__in=ids) | Q(payload__data__object__payment_intent__in=ids),
        provider__in={payment.provider for payment in payments},
        # Nothing about a payment arrives before it exists; bounds the scan of the inbox.
        received_at__gte=min(payment.created_at for payment in payments),
    )


class _MoneyEntries(_BuilderBase):
    """Entries of settlements, commands, webhooks and payment events."""

    def _settlement(self, settlement: Settlement, seat: Seat) -> Entry:
        inputs = settlement.inputs or {}
        currency = settlement.currency
        facts = [
            Fact("Amount", self.money(settlement.amount_minor, currency)),
            Fact("Rule", settlement.rule),
        ]
        if "billable_seconds" in inputs:
            facts.append(
                Fact("Billable time", self.value("billable_seconds", inputs["billable_seconds"]))
            )
        facts += [
            Fact("Why", settlement.explanation),
            Fact(
                "Split",
                f"platform fee {self.money(settlement.platform_fee_minor, currency)}, "
                f"expert {self.money(settlement.payout_minor, currency)}",
            ),
            Fact(
                "Payout",
                f"due {clock_text(settlement.payout_due_at, settlement.created_at)}"
                + (" — held" if settlement.payout_held else ""),
            ),
            Fact(
                "Inputs",
                lines=tuple(f"{fact.label}: {fact.value}" for fact in self.data_facts(inputs)),
            ),
        ]
        meter = self.meters.get(seat.pk)
        if meter:
            for key in ("live_window", "expert_presence", "client_presence", "media_links"):
                if _is_interval_list(meter.get(key)):
                    facts.append(
                        Fact(f"Metered: {_label(key).lower()}", lines=self.intervals(meter[key]))
                    )
        return Entry(
            at=settlement.created_at,
            category="settlement",
            title=f"Settled the seat of {self.name_of(seat.client_id, email=False)}: "
            f"{self.money(settlement.amount_minor, currency)}",
            facts=facts,
            links=[self.payment_link(settlement.payment_id)],
            tone="warn" if settlement.payout_held else "",
            pk=settlement.pk,
        )

    def _refund_deciders(self) -> dict[int, PaymentEvent]:
        """A refund's "refund_decided" event carries who decided it: told with its command."""
        return {
            event.data["command"]: event
            for event in self.payment_events
            if event.kind == "refund_decided" and isinstance((event.data or {}).get("command"), int)
        }

    def _command(self, command: PaymentCommand, decided: PaymentEvent | None) -> Entry:
        payment = self.payments.get(command.payment_id)
        currency = payment.currency if payment else self.room.currency
        amount = self.money(command.amount_minor, currency)
        title = COMMAND_TITLES.get(command.kind, f"{command.kind} {{amount}}").format(amount=amount)
        if command.state == CommandState.SUCCEEDED:
            outcome, tone = "done", "good"
        elif command.state == CommandState.FAILED:
            outcome, tone = "failed", "bad"
        else:
            outcome, tone = "waiting to be sent", "warn"
        if command.finished_at is not None:
            took = duration_text((command.finished_at - command.created_at).total_seconds())
            outcome += f" at {clock_text(command.finished_at, command.created_at)} ({took} later)"
        elif command.state == CommandState.PENDING:
            outcome += f"; next attempt {clock_text(command.next_attempt_at, command.created_at)}"
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
            who=self.person(decided.actor) if decided else None,
            facts=facts,
            links=[
                self.payment_link(command.payment_id),
                Link("billing_paymentcommand", command.pk, f"Command #{command.pk}"),
            ],
            tone=tone,
            pk=command.pk,
        )

    def _webhook(self, webhook: WebhookEvent) -> Entry:
        obj = ((webhook.payload or {}).get("data") or {}).get("object") or {}
        payment = next(
            (
                payment
                for payment in self.payments.values()
                if {obj.get("id"), obj.get("payment_intent")}
                & {payment.intent_id, payment.setup_id, payment.charge_id} - {""}
            ),
            None,
        )
        facts = [Fact("Type", webhook.type), Fact("Event id", webhook.event_id)]
        if isinstance(obj, dict):
            if obj.get("status"):
                facts.append(Fact("Status at the provider", str(obj["status"])))
            for key in ("amount", "amount_received", "amount_capturable", "amount_refunded"):
                if isinstance(obj.get(key), int) and payment is not None:
                    facts.append(Fact(_label(key), self.money(obj[key], payment.currency)))
        if webhook.processed_at is not None:
            facts.append(Fact("Processed", clock_text(webhook.processed_at, webhook.received_at)))
        else:
            facts.append(Fact("Processed", f"not yet ({webhook.attempts} attempts)"))
        if webhook.last_error:
            facts.append(Fact("Last error", webhook.last_error))
        links = [Link("billing_webhookevent", webhook.pk, f"Webhook #{webhook.pk}")]
        if payment is not None:
            links.insert(0, self.payment_link(payment.pk))
        return Entry(
            at=webhook.received_at,
            category="webhook",
            title=WEBHOOK_TITLES.get(webhook.type, f"Provider: {webhook.type}"),
            who_label=webhook.get_provider_display(),
            facts=facts,
            links=links,
            tone="bad" if webhook.last_error else "",
            pk=webhook.pk,
        )

    def _payment_event(self, event: PaymentEvent) -> Entry | None:
        data: dict[str, Any] = event.data or {}
        payment = self.payments.get(event.payment_id)
        if payment is None or self._told_elsewhere(event, payment):
            return None
        amount = self.money(event.amount_minor, payment.currency)
        template = PAYMENT_STATE_TITLES.get(event.kind) or PAYMENT_EVENT_TITLES.get(event.kind)
        title = (template or event.kind.replace("_", " ").capitalize()).format(amount=amount)
        facts = self.data_facts(data, skip=("intent",))
        if "old" in data and event.kind in PAYMENT_STATE_TITLES:
            facts = [f for f in facts if f.label != "Old"]
            facts.insert(0, Fact("From", _payment_state(data["old"])))
        if event.amount_minor is not None and "{amount}" not in (template or "{amount}"):
            facts.insert(0, Fact("Amount", amount))
        bad = event.kind.endswith("_failed") or event.kind.startswith("dispute")
        return Entry(
            at=event.created_at,
            category="payment",
            title=title,
            who=self.person(event.actor),
            facts=facts,
            links=[self.payment_link(event.payment_id)],
            tone="bad" if bad else "good" if event.kind == PaymentState.CAPTURED else "",
            pk=event.pk,
        )

    def _told_elsewhere(self, event: PaymentEvent, payment: Payment) -> bool:
        """Payment events that repeat a settlement, a command or a dispute shown on its own."""
        data = event.data or {}
        prefix = event.kind.rsplit("_", 1)[0]
        if event.kind == "settled":
            return _settlement_of(payment) is not None
        if event.kind.endswith("_requested") or event.kind == "refund_decided":
            return data.get("command") in self.command_ids
        if event.kind.endswith(("_sent", "_failed")) and prefix in CommandKind.values:
            # These name no command; the payment's command of that kind shows its outcome.
            return (payment.pk, prefix) in self.command_kinds
        if event.kind in ("dispute_opened", "dispute_closed"):
            return data.get("dispute") in self.chargeback_ids
        return False


def _settlement_of(payment: Payment | None) -> Settlement | None:
    if payment is None:
        return None
    try:
        return payment.settlement
    except Settlement.DoesNotExist:
        return None
