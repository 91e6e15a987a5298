"""Reads of accounts that more than one caller needs."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.models import Block, ExpertProfile, ExpertStatus, OutboundEmail, User


def experts_listed(*, query: str = "", language: str = "") -> QuerySet[ExpertProfile]:
    """Approved experts, the only ones the public sees, newest approvals first."""
    experts = ExpertProfile.objects.filter(status=ExpertStatus.APPROVED, user__is_active=True)
    if query:
        experts = experts.filter(
            Q(user__display_name__icontains=query)
            | Q(headline__icontains=query)
            | Q(bio__icontains=query)
        )
    if language:
        # JSON containment is not portable to SQLite; languages are a short list, so match
        # the quoted code inside the stored JSON text instead.
        experts = experts.filter(languages__icontains=f'"{language}"')
    return experts.select_related("user").order_by("-decided_at", "-pk")


def expert_profile_of(user: User) -> ExpertProfile | None:
    if not user.is_authenticated:
        return None
    return ExpertProfile.objects.filter(user=user).first()


def email_unsent_ids(older_than: timedelta = timedelta(minutes=1)) -> list[int]:
    now = timezone.now()
    return list(
        OutboundEmail.objects.filter(
            sent_at__isnull=True, parked_at__isnull=True, created_at__lt=now - older_than
        )
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .order_by("created_at")
        .values_list("pk", flat=True)[:500]
    )


def users_blocked_between(first_id: int, second_id: int) -> bool:
    """True when either of the two users has blocked the other."""
    return Block.objects.filter(
        Q(blocker_id=first_id, blocked_id=second_id) | Q(blocker_id=second_id, blocked_id=first_id)
    ).exists()
