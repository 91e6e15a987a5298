"""Reports: what a participant tells staff about a session or a person in it."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from rooms.models import Room


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
    """A participant's report to staff about a session (and, when they chose, a person)."""

    room = models.ForeignKey(Room, on_delete=models.PROTECT, related_name="reports")
    reporter = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reports_filed"
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
    state = models.CharField(max_length=10, choices=ReportState.choices, default=ReportState.OPEN)
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
        ]

    def __str__(self) -> str:
        return f"{self.get_category_display()} report on room {self.room_id}"
