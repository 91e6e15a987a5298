"""Ratings on the expert's card and page (templates/accounts/): accounts sits below rooms and
cannot read ratings, so its templates load them here."""

from __future__ import annotations

from collections.abc import Iterable

from django import template

from accounts.models import ExpertProfile, User
from rooms import ratings
from rooms.ratings import OwnRatings, RatingSummary, Review

register = template.Library()


@register.simple_tag
def rating_summaries_for(profiles: Iterable[ExpertProfile]) -> dict[int, RatingSummary]:
    """The summaries of a page of expert cards, by user id, in one query."""
    return ratings.rating_summaries(profile.user_id for profile in profiles)


@register.filter
def rating_of(summaries: object, user_id: int) -> RatingSummary | None:
    """The card's summary; None when the page loaded none (the card then shows no rating)."""
    if not isinstance(summaries, dict):
        return None
    found = summaries.get(user_id)
    return found if isinstance(found, RatingSummary) else None


@register.simple_tag
def rating_summary(expert: User) -> RatingSummary:
    return ratings.rating_summary(expert)


@register.simple_tag
def reviews_recent(expert: User) -> list[Review]:
    return ratings.reviews_recent(expert)


@register.simple_tag
def ratings_own(expert: User) -> OwnRatings:
    return ratings.ratings_own(expert)
