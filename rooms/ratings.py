"""Reads of ratings: the average and count on an expert's card and page, and their reviews.

Hidden ratings (staff took them down, rooms.services.feedback.rating_hide) count nowhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from django.db.models import Avg, Count, Q

from accounts.models import User
from rooms.models import Rating

# Written reviews on the expert's public page; the expert's own list is longer.
REVIEWS_SHOWN = 5
OWN_RATINGS_SHOWN = 50


@dataclass(frozen=True)
class RatingSummary:
    count: int
    average: Decimal | None  # one decimal; None without ratings

    @property
    def label(self) -> str:
        if self.average is None:
            return "No ratings yet"
        ratings = "rating" if self.count == 1 else "ratings"
        return f"{self.average} out of 5 from {self.count} {ratings}"


@dataclass(frozen=True)
class Review:
    stars: int
    comment: str
    reviewer: str  # first name and the initial of the last, as the public sees the client
    created_at: datetime


NO_RATINGS = RatingSummary(count=0, average=None)


def _one_decimal(average: float | Decimal | None) -> Decimal | None:
    if average is None:
        return None
    return Decimal(str(average)).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def rating_summaries(expert_ids: Iterable[int]) -> dict[int, RatingSummary]:
    """The summary of each expert, in one aggregate query; experts without a visible rating
    get NO_RATINGS."""
    ids = set(expert_ids)
    rows = (
        Rating.objects.filter(expert_id__in=ids, hidden=False)
        .values("expert_id")
        .annotate(count=Count("pk"), average=Avg("stars"))
        .order_by()
    )
    found = {
        row["expert_id"]: RatingSummary(row["count"], _one_decimal(row["average"])) for row in rows
    }
    return {pk: found.get(pk, NO_RATINGS) for pk in ids}


def rating_summary(expert: User) -> RatingSummary:
    return rating_summaries([expert.pk])[expert.pk]


def reviewer_name(display_name: str) -> str:
    """ "Anna Kowalska" → "Anna K."; a single name stays as it is."""
    words = display_name.split()
    if not words:
        return "A client"
    if len(words) == 1:
        return words[0]
    return f"{words[0]} {words[-1][0]}."


def _review(rating: Rating) -> Review:
    return Review(
        stars=rating.stars,
        comment=rating.comment,
        reviewer=reviewer_name(rating.client.display_name),
        created_at=rating.created_at,
    )


def reviews_recent(expert: User, limit: int = REVIEWS_SHOWN) -> list[Review]:
    """The newest written reviews the public sees on the expert's page."""
    ratings = (
        Rating.objects.filter(expert=expert, hidden=False)
        .exclude(comment="")
        .select_related("client")
        .order_by("-created_at", "-pk")[:limit]
    )
    return [_review(rating) for rating in ratings]


@dataclass(frozen=True)
class OwnRatings:
    """What an expert sees of their own ratings: every visible one, written or not, and how
    many staff hid."""

    summary: RatingSummary
    ratings: list[Review]
    hidden_count: int


def ratings_own(expert: User, limit: int = OWN_RATINGS_SHOWN) -> OwnRatings:
    counts = Rating.objects.filter(expert=expert).aggregate(
        count=Count("pk", filter=Q(hidden=False)),
        average=Avg("stars", filter=Q(hidden=False)),
        hidden=Count("pk", filter=Q(hidden=True)),
    )
    ratings = (
        Rating.objects.filter(expert=expert, hidden=False)
        .select_related("client")
        .order_by("-created_at", "-pk")[:limit]
    )
    return OwnRatings(
        summary=RatingSummary(counts["count"], _one_decimal(counts["average"])),
        ratings=[_review(rating) for rating in ratings],
        hidden_count=counts["hidden"],
    )
