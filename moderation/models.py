"""What moderation keeps: reports, disputes, and the append-only logs of staff actions and of
blocks.

Blocks and bans are relations and flags of users, so they live in accounts (STYLE.md);
moderation gives them their UI, their admin and their audit rows.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.append_only import AppendOnlyModel
from accounts.choices import CURRENCY_CHOICES
from rooms.models import Room, Seat


class ReportCategory(models.TextChoices):
    HARASSMENT = "harassment", "Harassment or abuse"
    INAPPROPRIATE = "inappropriate", "Inappropriate content"
    FRAUD = "fraud", "Fraud or no-show"
    TECHNICAL = "technical", "Technical problem"
    OTHER = "other", "Something else"


class ReportState(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"


class Report(models.Model):
    """A report to staff about a session (and, when known, a person in it): filed by a
    participant, or by Parley itself (no reporter) when an expert did not show up."""

    room = models.ForeignKey(Room, on_delete=models.PROTECT, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reports_filed",
    )
    about = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="reports_about",
    )
    category = models.CharField(max_length=16, choices=ReportCategory.choices)
    text = models.TextField(max_length=2000)
    # Filed by Parley, not a person (the expert no-show report).
    automatic = models.BooleanField(default=False)
    state = models.CharField(max_length=10, choices=ReportState.choices, default=ReportState.OPEN)
    resolution = models.TextField(blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(category__in=ReportCategory.values), name="report_category_valid"
            ),
            models.CheckConstraint(
                condition=~Q(reporter=models.F("about")), name="report_not_self"
            ),
            models.CheckConstraint(
                condition=Q(automatic=True, reporter__isnull=True)
                | Q(automatic=False, reporter__isnull=False),
                name="report_by_a_person_or_automatic",
            ),
            models.CheckConstraint(
                condition=Q(state=ReportState.OPEN, resolved_at__isnull=True)
                | Q(state=ReportState.RESOLVED, resolved_at__isnull=False),
                name="report_resolved_has_time",
            ),
            # One automatic no-show report per room, however often the close is retried.
            models.UniqueConstraint(
                fields=["room", "category"],
                condition=Q(automatic=True),
                name="report_one_automatic_per_room",
            ),
        ]
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self) -> str:
        return f"{self.get_category_display()} report on room {self.room_id}"


class DisputeReason(models.TextChoices):
    NOT_AS_DESCRIBED = "not_as_described", "The session was not what was offered"
    EXPERT_ABSENT = "expert_absent", "The expert did not show up or left early"
    QUALITY = "quality", "The call did not work well enough"
    WRONG_AMOUNT = "wrong_amount", "I was charged the wrong amount"
    CONDUCT = "conduct", "The expert behaved inappropriately"
    OTHER = "other", "Something else"
    # Set for chargebacks: the card holder's bank opened it.
    CHARGEBACK = "chargeback", "Card chargeback"


class DisputeSource(models.TextChoices):
    CLIENT = "client", "The client"
    CHARGEBACK = "chargeback", "The card's bank (chargeback)"


class DisputeState(models.TextChoices):
    OPEN = "open", "Open"
    REFUNDED = "refunded", "Refunded in full"
    PARTIALLY_REFUNDED = "partially_refunded", "Partly refunded"
    REJECTED = "rejected", "Rejected"
    CHARGEBACK_WON = "chargeback_won", "Chargeback decided for Parley"
    CHARGEBACK_LOST = "chargeback_lost", "Chargeback decided for the card holder"


# moderation/services/disputes.py is the only writer of a dispute's state. An outcome is
# final, except a refund the provider then refused: the dispute opens again to be decided anew.
DISPUTE_TRANSITIONS: dict[str, frozenset[str]] = {
    DisputeState.OPEN: frozenset(
        {
            DisputeState.REFUNDED,
            DisputeState.PARTIALLY_REFUNDED,
            DisputeState.REJECTED,
            DisputeState.CHARGEBACK_WON,
            DisputeState.CHARGEBACK_LOST,
        }
    ),
    DisputeState.REFUNDED: frozenset({DisputeState.OPEN}),
    DisputeState.PARTIALLY_REFUNDED: frozenset({DisputeState.OPEN}),
    DisputeState.REJECTED: frozenset(),
    DisputeState.CHARGEBACK_WON: frozenset(),
    DisputeState.CHARGEBACK_LOST: frozenset(),
}


class Dispute(models.Model):
    """A client's claim against what a settled seat cost, or a chargeback on its payment.

    While it is open the room's payout to the expert is held; staff resolve a client's dispute
    with a refund (through billing's commands) or a rejection, and a note the client reads.
    """

    seat = models.ForeignKey(Seat, on_delete=models.PROTECT, related_name="disputes")
    payment = models.ForeignKey(
        "billing.Payment", on_delete=models.PROTECT, related_name="disputes"
    )
    client = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="disputes"
    )
    source = models.CharField(max_length=10, choices=DisputeSource.choices)
    reason = models.CharField(max_length=20, choices=DisputeReason.choices)
    text = models.TextField(max_length=4000, blank=True)
    provider_dispute_id = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=20, choices=DisputeState.choices, default=DisputeState.OPEN)
    # What was charged when the dispute opened, for staff; refunds are decided against what
    # is refundable at resolution time.
    charged_minor = models.PositiveIntegerField()
    refund_minor = models.PositiveIntegerField(default=0)
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    # Shown to the client with the outcome.
    resolution_note = models.TextField(blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    # The refund the decision sent (billing's command): if the provider refuses it, the
    # dispute opens again with the provider's answer in `refund_error`.
    refund_command = models.ForeignKey(
        "billing.PaymentCommand",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
    )
    refund_error = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(state__in=DisputeState.values), name="dispute_state_valid"
            ),
            models.CheckConstraint(
                condition=Q(state=DisputeState.OPEN, resolved_at__isnull=True)
                | (~Q(state=DisputeState.OPEN) & Q(resolved_at__isnull=False)),
                name="dispute_resolved_has_time",
            ),
            models.CheckConstraint(
                condition=Q(refund_minor__lte=models.F("charged_minor")),
                name="dispute_refund_within_charge",
            ),
            # A client disputes a seat once; the bank's chargebacks are one row per dispute id.
            models.UniqueConstraint(
                fields=["seat"],
                condition=Q(source=DisputeSource.CLIENT),
                name="dispute_one_per_seat_by_client",
            ),
            models.UniqueConstraint(
                fields=["provider_dispute_id"],
                condition=~Q(provider_dispute_id=""),
                name="dispute_one_per_chargeback",
            ),
        ]
        indexes = [models.Index(fields=["state", "created_at"])]

    def __str__(self) -> str:
        return f"Dispute {self.pk} on seat {self.seat_id} ({self.get_state_display()})"

    @property
    def is_open(self) -> bool:
        return self.state == DisputeState.OPEN


class StaffActionKind(models.TextChoices):
    ROOM_END = "room_end", "Ended a room"
    PARTICIPANT_REMOVE = "participant_remove", "Removed a participant"
    USER_BAN = "user_ban", "Banned a user"
    USER_UNBAN = "user_unban", "Lifted a ban"
    DISPUTE_RESOLVE = "dispute_resolve", "Resolved a dispute"
    REPORT_RESOLVE = "report_resolve", "Resolved a report"


class StaffAction(AppendOnlyModel):
    """What a staff member did, to what, and why: written in the transaction of the action."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="staff_actions"
    )
    kind = models.CharField(max_length=20, choices=StaffActionKind.choices)
    reason = models.TextField()
    room = models.ForeignKey(
        Room, null=True, blank=True, on_delete=models.PROTECT, related_name="staff_actions"
    )
    subject = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="staff_actions_about",
    )
    dispute = models.ForeignKey(
        Dispute, null=True, blank=True, on_delete=models.PROTECT, related_name="staff_actions"
    )
    report = models.ForeignKey(
        Report, null=True, blank=True, on_delete=models.PROTECT, related_name="staff_actions"
    )
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(AppendOnlyModel.Meta):
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=StaffActionKind.values), name="staff_action_kind_valid"
            ),
            models.CheckConstraint(condition=~Q(reason=""), name="staff_action_has_reason"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} by {self.actor_id} at {self.created_at:%Y-%m-%d %H:%M}"


class BlockEventKind(models.TextChoices):
    CREATED = "created", "Blocked"
    REMOVED = "removed", "Unblocked"


class BlockEvent(AppendOnlyModel):
    """Who blocked or unblocked whom, when and why. A block is a row that unblocking deletes
    (accounts' Block), so this log is what staff read when a pair's history matters; it is
    written in the transaction of the change (moderation/services/blocks.py)."""

    blocker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="block_events_made"
    )
    blocked = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="block_events_received"
    )
    kind = models.CharField(max_length=10, choices=BlockEventKind.choices)
    # The blocker's own words, when they gave any (an unblock asks for none).
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(AppendOnlyModel.Meta):
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=BlockEventKind.values), name="block_event_kind_valid"
            ),
        ]
        indexes = [models.Index(fields=["blocker", "blocked", "created_at"])]

    def __str__(self) -> str:
        return f"{self.blocker_id} {self.get_kind_display().lower()} {self.blocked_id}"


class LiveRoom(Room):
    """Rooms that are open or live, as staff watch them (admin's live-rooms view)."""

    class Meta:
        proxy = True
        verbose_name = "live room"
        verbose_name_plural = "live rooms"
