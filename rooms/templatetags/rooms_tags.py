from __future__ import annotations

from typing import Any

from django import template

from accounts.models import User
from billing.pricing import format_money
from rooms import selectors
from rooms.models import Offering, Pricing

register = template.Library()


@register.inclusion_tag("rooms/_expert_offerings.html")
def expert_offerings(expert: User) -> dict[str, Any]:
    """The bookable offerings of an expert, for their public profile."""
    return {"offerings": selectors.offerings_bookable(expert)}


@register.filter
def money(amount_minor: int, currency: str) -> str:
    return format_money(amount_minor, currency)


@register.filter
def price_label(offering: Offering) -> str:
    amount = format_money(offering.price_minor, offering.currency)
    if offering.pricing == Pricing.PER_MINUTE:
        cap = format_money(offering.max_amount_minor, offering.currency)
        return f"{amount} per minute, at most {cap}"
    return amount
