"""Pure money arithmetic: inputs in, integer minor units out. No ORM, no provider."""

from __future__ import annotations

from accounts.choices import CURRENCIES


def format_money(amount_minor: int, currency: str) -> str:
    """12345, "EUR" → "123.45 EUR"; 1200, "JPY" → "1200 JPY" (minor units per ISO 4217)."""
    digits = CURRENCIES[currency][1]
    if digits == 0:
        return f"{amount_minor} {currency}"
    major, minor = divmod(amount_minor, 10**digits)
    return f"{major}.{minor:0{digits}d} {currency}"


def percent_of(amount_minor: int, percent: int) -> int:
    """`percent` % of an amount, rounded half up to a whole minor unit."""
    if amount_minor < 0 or not 0 <= percent <= 100:
        raise ValueError("amount must be ≥ 0 and percent within 0..100")
    return (amount_minor * percent + 50) // 100


def cancellation_fee(
    *, max_amount_minor: int, late_fee_percent: int, hours_before_start: float, free_hours: int
) -> int:
    """What a client owes for canceling: nothing up to `free_hours` before the start, then the
    offering's late-cancel percentage of the seat's maximum."""
    if hours_before_start >= free_hours:
        return 0
    return percent_of(max_amount_minor, late_fee_percent)
