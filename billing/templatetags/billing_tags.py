"""What templates of other apps show of billing: a settlement's reason, in money."""

from __future__ import annotations

from django import template

from billing.models import Settlement
from billing.selectors import settlement_explanation

register = template.Library()


@register.filter
def explained(settlement: Settlement) -> str:
    """ "73 s connected → 2 started minutes × 1.00 EUR = 2.00 EUR." for a settlement."""
    return settlement_explanation(settlement)
