from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

from accounts.append_only import AppendOnlyModel
from accounts.choices import CURRENCY_CHOICES
from accounts.validators import validate_no_control_characters, validate_time_zone


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("A user needs an email address.")
        user = self.model(email=self.normalize_email(email), **extra)
        user.set_password(password)
        user.full_clean(exclude=["password"])
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in with an email address; client by default, expert once approved."""

    email = models.EmailField("email address", unique=True)
    display_name = models.CharField(
        max_length=80,
        validators=[validate_no_control_characters],
        help_text="Shown to the people you meet in calls.",
    )
    time_zone = models.CharField(
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="Times are shown to you in this zone.",
    )
    booking_reminders = models.BooleanField(
        default=True,
        # Rows written without it (older code, raw SQL) get reminders, as new ones do.
        db_default=True,
        help_text="Email me a reminder the day before and 15 minutes before each session.",
    )
    is_staff = models.BooleanField(
        default=False, help_text="Can sign in to the staff admin (with two-factor authentication)."
    )
    is_active = models.BooleanField(default=True)
    date_joined = models.DateTimeField(default=timezone.now)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS = ["display_name"]

    class Meta:
        constraints = [
            # "Ann@x.test" and "ann@x.test" are one mailbox, so they are one account.
            models.UniqueConstraint(Lower("email"), name="user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.display_name} <{self.email}>"

    def get_full_name(self) -> str:
        return self.display_name

    def get_short_name(self) -> str:
        return self.display_name


class ExpertStatus(models.TextChoices):
    PENDING = "pending", "Waiting for review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Not approved"


# The application's state machine; accounts/services.py is the only writer of `status`.
EXPERT_TRANSITIONS: dict[str, frozenset[str]] = {
    ExpertStatus.PENDING: frozenset({ExpertStatus.APPROVED, ExpertStatus.REJECTED}),
    ExpertStatus.REJECTED: frozenset({ExpertStatus.PENDING}),
    ExpertStatus.APPROVED: frozenset(),
}


class ExpertProfile(models.Model):
    """A user's application to sell their time, and once approved, their public profile."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="expert_profile"
    )
    slug = models.SlugField(max_length=90, unique=True)
    headline = models.CharField(max_length=120, validators=[validate_no_control_characters])
    bio = models.TextField(max_length=5000)
    languages = models.JSONField(default=list, help_text="ISO 639-1 codes.")
    currency = models.CharField(max_length=3, choices=CURRENCY_CHOICES)
    time_zone = models.CharField(max_length=64, validators=[validate_time_zone])
    status = models.CharField(
        max_length=16, choices=ExpertStatus.choices, default=ExpertStatus.PENDING
    )
    decision_reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    submitted_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=ExpertStatus.values),
                name="expert_status_valid",
            ),
            # The applicant must learn why; a rejection without a reason cannot be stored.
            models.CheckConstraint(
                condition=~models.Q(status=ExpertStatus.REJECTED) | ~models.Q(decision_reason=""),
                name="expert_rejection_has_reason",
            ),
        ]
        indexes = [models.Index(fields=["status", "submitted_at"])]

    def __str__(self) -> str:
        return f"{self.user.display_name} — {self.headline}"

    @property
    def is_listed(self) -> bool:
        return self.status == ExpertStatus.APPROVED


class ExpertEventKind(models.TextChoices):
    APPLIED = "applied", "Applied"
    UPDATED = "updated", "Updated profile"
    RESUBMITTED = "resubmitted", "Resubmitted after rejection"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class ExpertEvent(AppendOnlyModel):
    """Append-only history of an expert application: who did what, when and why."""

    profile = models.ForeignKey(ExpertProfile, on_delete=models.PROTECT, related_name="events")
    kind = models.CharField(max_length=16, choices=ExpertEventKind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+"
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta(AppendOnlyModel.Meta):
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} at {self.created_at:%Y-%m-%d %H:%M}"


class OutboundEmail(models.Model):
    """An email decided inside a transaction and sent after commit, exactly once per key.

    The key names the reason for the email (e.g. ``expert-decision:<event id>``), so a retried
    task or a second worker cannot send the same message twice.
    """

    key = models.CharField(max_length=200, unique=True)
    to = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    # The same message as HTML, sent as the alternative to the text `body` (empty: text only).
    # Sealed like the body when the email carries a secret.
    html = models.TextField(blank=True)
    # Extra headers, e.g. List-Unsubscribe on reminders: kept on the row so a message sent
    # late by the sweep carries them too.
    headers = models.JSONField(default=dict, blank=True)
    # An iCalendar attachment (text/calendar), with its METHOD (REQUEST, CANCEL) for mail
    # clients that act on invitations.
    ics = models.TextField(blank=True)
    ics_method = models.CharField(max_length=16, blank=True)
    # An email rendered when it is sent rather than when it is decided (a booking's
    # confirmation: templates and an invitation cost more than the booking's own writes): the
    # name of its renderer (`accounts.services.email_renderer`) and the ids it renders from.
    # Body, html and ics stay empty until then, and keep what was sent afterwards.
    renderer = models.CharField(max_length=100, blank=True, default="")
    renderer_args = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    # A worker leases the row before talking to the mail server, so two workers never send it
    # both; a lease left by a crashed worker expires and the sweep tries again.
    leased_until = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # Set when the email can never be sent as it is (a content error) or failed
    # EMAIL_MAX_ATTEMPTS times: the sweep leaves it alone until staff send it again from admin.
    parked_at = models.DateTimeField(null=True, blank=True)
    # The body carries a secret (a password-reset or verification link): stored encrypted,
    # never shown in admin, and emptied once sent (accounts/sealing.py).
    sealed = models.BooleanField(default=False)
    # Who sent a parked email again, and when: staff's decision stays on the row it changed.
    unparked_by = models.ForeignKey(
        User, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    unparked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["sent_at", "created_at"])]

    def __str__(self) -> str:
        return f"{self.subject} → {self.to}"


class Block(models.Model):
    """One user blocking another. Either direction keeps the pair apart: no bookings, no calls.

    Blocks are a relation between users, so they live here; moderation gives them their UI.
    """

    blocker = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="blocks_made"
    )
    blocked = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="blocks_received"
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["blocker", "blocked"], name="block_pair_unique"),
            models.CheckConstraint(
                condition=~models.Q(blocker=models.F("blocked")), name="block_not_self"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.blocker_id} blocks {self.blocked_id}"
