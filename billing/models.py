"""Payments as running totals plus an append-only event log; commands to send to the provider;
settlements; the webhook inbox; and the built-in local provider's own ledger.

Every amount is an integer in minor units of the payment's currency. billing/services/ is
the only writer of payment state.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from accounts.append_only import AppendOnlyModel
from accounts.choices import CURRENCY_CHOICES


class Provider(models.TextChoices):
    LOCAL = "local", "Built-in test provider"
    STRIPE = "stripe", "Stripe"


class PaymentState(models.TextChoices):
    PENDING = "pending", "Waiting for the card"
    CARD_SAVED = "card_saved", "Card saved; the hold is placed a day before"
    AUTHORIZED = "authorized", "Hold placed"
    CAPTURED = "captured", "Charged"
    CANCELED = "canceled", "Released"


# States only move forward (a late or repeated webhook can never move a payment back).
PAYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    PaymentState.PENDING: frozenset(
        {PaymentState.CARD_SAVED, PaymentState.AUTHORIZED, PaymentState.CANCELED}
    ),
    PaymentState.CARD_SAVED: frozenset({PaymentState.AUTHORIZED, PaymentState.CANCELED}),
    PaymentState.AUTHORIZED: frozenset({PaymentState.CAPTURED, PaymentState.CANCELED}),
    PaymentState.CAPTURED: frozenset(),
    PaymentState.CANCELED: frozenset(),
}


class Payment(models.Model):
    """What one payer owes for one purchase: the hold, and what became of it.

    `amount_minor` is the most this payment may ever take (the hold). The totals only grow:
    captured + released never exceed what was authorized, refunds never exceed the capture.
    """

    payer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments"
    )
    # Who is paid out of it (the expert); the platform keeps its fee.
    payee = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payments_received"
    )
    provider = models.CharField(max_length=10, choices=Provider.choices)
    # What is bought ("Architecture review"), without who or when: each side reads it with the
    # other person's name, and `starts_at` in their own zone (billing.selectors.payment_subject).
    description = models.CharField(max_length=200)
    # When the session bought starts; None for a purchase that is not a session.
    starts_at = models.DateTimeField(null=True, blank=True)
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    amount_minor = models.PositiveIntegerField()
    state = models.CharField(
        max_length=12, choices=PaymentState.choices, default=PaymentState.PENDING
    )
    authorized_minor = models.PositiveIntegerField(default=0)
    captured_minor = models.PositiveIntegerField(default=0)
    # The part of the hold given back without being charged (cancel, or the rest of a capture).
    released_minor = models.PositiveIntegerField(default=0)
    refunded_minor = models.PositiveIntegerField(default=0)
    # Sessions far ahead save the card now and place the hold at `hold_at` (cards' holds lapse).
    hold_at = models.DateTimeField(null=True, blank=True)
    # The provider's objects: PaymentIntent, SetupIntent, Customer, saved PaymentMethod.
    intent_id = models.CharField(max_length=100, blank=True)
    setup_id = models.CharField(max_length=100, blank=True)
    customer_id = models.CharField(max_length=100, blank=True)
    payment_method_id = models.CharField(max_length=100, blank=True)
    # The charge a capture made: payouts are transferred against it.
    charge_id = models.CharField(max_length=100, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=Q(amount_minor__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(
                condition=Q(authorized_minor__lte=F("amount_minor")),
                name="payment_authorized_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(authorized_minor__gte=F("captured_minor") + F("released_minor")),
                name="payment_captured_and_released_within_authorized",
            ),
            models.CheckConstraint(
                condition=Q(refunded_minor__lte=F("captured_minor")),
                name="payment_refunded_within_captured",
            ),
            models.CheckConstraint(
                condition=Q(state__in=PaymentState.values), name="payment_state_valid"
            ),
            models.UniqueConstraint(
                fields=["provider", "intent_id"],
                condition=~Q(intent_id=""),
                name="payment_one_per_intent",
            ),
        ]
        indexes = [models.Index(fields=["state", "hold_at"])]

    def __str__(self) -> str:
        return f"Payment {self.pk} ({self.get_state_display()})"

    @property
    def refundable_minor(self) -> int:
        return self.captured_minor - self.refunded_minor


class PaymentEvent(AppendOnlyModel):
    """The payment's history: every decision, every provider answer, every webhook applied."""

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="events")
    kind = models.CharField(max_length=40)
    amount_minor = models.PositiveIntegerField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(AppendOnlyModel.Meta):
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.kind} at {self.created_at:%Y-%m-%d %H:%M:%S}"


class CommandKind(models.TextChoices):
    CAPTURE = "capture", "Capture"
    CANCEL = "cancel", "Cancel the hold"
    REFUND = "refund", "Refund"
    TRANSFER = "transfer", "Transfer to the expert"


class CommandState(models.TextChoices):
    PENDING = "pending", "Waiting to be sent"
    SUCCEEDED = "succeeded", "Done"
    FAILED = "failed", "Failed"


class PaymentCommand(models.Model):
    """An operation to send to the provider, written in the transaction that decided it.

    A worker sends it after commit under a lease, with an idempotency key derived from the
    command's own id, so a retry — or a second worker — can only repeat the same request.
    """

    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="commands")
    kind = models.CharField(max_length=10, choices=CommandKind.choices)
    amount_minor = models.PositiveIntegerField()
    state = models.CharField(
        max_length=10, choices=CommandState.choices, default=CommandState.PENDING
    )
    reason = models.CharField(max_length=200)
    # For a transfer: the connected account it goes to.
    destination = models.CharField(max_length=100, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    leased_until = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    provider_ref = models.CharField(max_length=100, blank=True)
    last_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            # A hold ends once: captured (for the settled amount) or canceled, never both.
            models.UniqueConstraint(
                fields=["payment"],
                condition=Q(kind__in=["capture", "cancel"]),
                name="command_one_capture_or_cancel_per_payment",
            ),
            # One transfer on its way or done; a failed one may be followed by another.
            models.UniqueConstraint(
                fields=["payment"],
                condition=Q(kind="transfer") & ~Q(state="failed"),
                name="command_one_live_transfer_per_payment",
            ),
            models.CheckConstraint(
                condition=Q(state__in=CommandState.values), name="command_state_valid"
            ),
        ]
        indexes = [models.Index(fields=["state", "next_attempt_at"])]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount_minor} ({self.state})"

    @property
    def idempotency_key(self) -> str:
        return f"parley-command-{self.pk}"


class Settlement(models.Model):
    """What a payment finally costs, with the inputs and the rule that produced the number."""

    payment = models.OneToOneField(Payment, on_delete=models.PROTECT, related_name="settlement")
    rule = models.CharField(max_length=30)
    amount_minor = models.PositiveIntegerField()
    platform_fee_minor = models.PositiveIntegerField()
    payout_minor = models.PositiveIntegerField()
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    inputs = models.JSONField(default=dict)
    explanation = models.CharField(max_length=300)
    # Payouts wait for the dispute window; an open dispute holds them (moderation).
    payout_due_at = models.DateTimeField()
    payout_held = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_minor=F("platform_fee_minor") + F("payout_minor")),
                name="settlement_fee_and_payout_add_up",
            ),
        ]

    def __str__(self) -> str:
        return f"Settlement of payment {self.payment_id}: {self.amount_minor} {self.currency}"


class PayoutAccount(models.Model):
    """An expert's connected account at the provider (Stripe Connect Express)."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="payout_account"
    )
    provider = models.CharField(max_length=10, choices=Provider.choices)
    account_id = models.CharField(max_length=100, unique=True)
    details_submitted = models.BooleanField(default=False)
    payouts_enabled = models.BooleanField(default=False)
    # When the provider's snapshot behind the two flags was taken: an older one, delivered
    # late, never overwrites a newer one.
    status_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"Payout account {self.account_id}"


class WebhookEvent(models.Model):
    """Inbox of provider events: stored once by the provider's id, processed after commit."""

    provider = models.CharField(max_length=10, choices=Provider.choices)
    event_id = models.CharField(max_length=100)
    type = models.CharField(max_length=80)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["received_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["provider", "event_id"], name="webhook_event_once")
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


# --- The built-in local provider's side of the world ------------------------------------------


class LocalIntent(models.Model):
    """The local provider's PaymentIntent or SetupIntent: what a real provider would hold.

    Statuses use Stripe's words, so the services treat both providers alike.
    """

    id = models.CharField(primary_key=True, max_length=40)
    kind = models.CharField(max_length=10, default="payment")  # payment | setup
    customer = models.CharField(max_length=40, blank=True)
    payment_method = models.CharField(max_length=40, blank=True)
    amount_minor = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=30, default="requires_payment_method")
    captured_minor = models.PositiveIntegerField(default=0)
    refunded_minor = models.PositiveIntegerField(default=0)
    card_last4 = models.CharField(max_length=4, blank=True)
    metadata = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class LocalOperation(AppendOnlyModel):
    """Every request the local provider answered; a repeated idempotency key replays it."""

    intent = models.ForeignKey(
        LocalIntent, null=True, on_delete=models.PROTECT, related_name="operations"
    )
    operation = models.CharField(max_length=30)
    amount_minor = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=100, null=True, blank=True, unique=True)
    outcome = models.CharField(max_length=200)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(AppendOnlyModel.Meta):
        ordering = ["created_at", "pk"]

    def __str__(self) -> str:
        return f"{self.operation} on {self.intent_id or '-'}: {self.outcome}"
