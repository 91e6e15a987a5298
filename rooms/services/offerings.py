"""Offerings and availability: what an expert sells and when they work."""

from __future__ import annotations

from datetime import time
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from accounts.models import User
from accounts.validators import validate_no_control_characters
from rooms import selectors
from rooms.errors import RoomsError
from rooms.models import (
    AvailabilityOverride,
    AvailabilityRule,
    Offering,
    OverrideKind,
)

# Booking, holds and settlement all assume an amount to authorize; a free session would need
# a path without a card (docs/RULES.md, Booking). Refused here until that path exists.
FREE_NOT_YET = (
    "Free sessions are not offered yet: set a price above zero (the smallest is one cent, "
    "or one unit of a currency without cents)."
)


def offering_save(expert: User, offering: Offering | None, fields: dict[str, Any]) -> Offering:
    """Create or edit an offering. Booked rooms keep the terms they were sold on."""
    if not selectors.expert_is_approved(expert):
        raise RoomsError("Only approved experts can sell sessions.")
    if "price_minor" in fields and fields["price_minor"] <= 0:
        raise RoomsError(FREE_NOT_YET)
    if "title" in fields:
        try:
            validate_no_control_characters(str(fields["title"]))
        except ValidationError as error:
            raise RoomsError(" ".join(error.messages)) from None
    if offering is None:
        offering = Offering(expert=expert)
    elif offering.expert_id != expert.pk:
        raise RoomsError("This offering belongs to another expert.")
    for name, value in fields.items():
        setattr(offering, name, value)
    offering.full_clean()
    offering.save()
    return offering


def availability_replace_weekly(
    expert: User, intervals: list[tuple[int, time, time]]
) -> list[AvailabilityRule]:
    """Replace the expert's weekly rules in one go (the weekly editor saves the whole week)."""
    for _weekday, start, end in intervals:
        if not start < end:
            raise RoomsError(f"An interval must end after it starts ({start:%H:%M}–{end:%H:%M}).")
    ordered = sorted(intervals)
    for (day_a, _start_a, end_a), (day_b, start_b, _end_b) in zip(
        ordered, ordered[1:], strict=False
    ):
        if day_a == day_b and start_b < end_a:
            raise RoomsError("Two intervals on the same day overlap; merge them into one.")
    with transaction.atomic():
        AvailabilityRule.objects.filter(expert=expert).delete()
        return AvailabilityRule.objects.bulk_create(
            AvailabilityRule(expert=expert, weekday=weekday, start_time=start, end_time=end)
            for weekday, start, end in ordered
        )


def availability_override_add(
    expert: User, *, day: Any, kind: str, start: time | None, end: time | None
) -> AvailabilityOverride:
    override = AvailabilityOverride(expert=expert, date=day, kind=kind)
    if kind == OverrideKind.EXTRA:
        override.start_time, override.end_time = start, end
    override.full_clean()
    override.save()
    return override


def availability_override_delete(expert: User, override_id: int) -> None:
    AvailabilityOverride.objects.filter(pk=override_id, expert=expert).delete()
