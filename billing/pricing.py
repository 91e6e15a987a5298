"""Pure money arithmetic: inputs in, integer minor units out. No ORM, no provider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accounts.choices import CURRENCIES

# A call connected for less than this in all (its early minutes included) is free.
FREE_SECONDS = 60


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


@dataclass(frozen=True)
class CallCharge:
    """What a call costs, and why: the rule and a sentence a person can check."""

    amount_minor: int
    rule: str
    explanation: str


def call_charge(
    *,
    pricing: str,
    price_minor: int,
    cap_minor: int,
    connected_seconds: int,
    billable_seconds: int,
    outcome: str = "completed",
    no_show_fee_percent: int = 0,
    currency: str | None = None,
) -> CallCharge:
    """Price one seat of a closed call (docs/RULES.md, What is billed).

    `connected_seconds` is all the connected time in the live window, early minutes in the
    lobby included: under `FREE_SECONDS` of it the call failed and costs nothing, and from
    `FREE_SECONDS` the fixed price is due. `billable_seconds` is the part inside the booked
    time: only its started minutes are priced per minute (the early minutes are free).

    `pricing` is "fixed" (price_minor is the price) or "per_minute" (price_minor is the rate per
    started minute, `cap_minor` the most it may cost). `outcome` is "completed",
    "client_no_show" (the no-show fee of the cap) or "expert_no_show" (nothing). With the
    `currency`, the explanation says every amount in money ("2 started minutes × 1.00 EUR");
    without it (pure arithmetic), in minor units.
    """
    if pricing not in ("fixed", "per_minute"):
        raise ValueError(f"unknown pricing {pricing!r}")
    if min(price_minor, cap_minor, connected_seconds, billable_seconds) < 0:
        raise ValueError("amounts and seconds must be ≥ 0")
    if billable_seconds > connected_seconds:
        raise ValueError("billable seconds cannot exceed connected seconds")

    def money(amount_minor: int) -> str:
        if currency is None:
            return f"{amount_minor} (minor units)"
        return format_money(amount_minor, currency)

    if outcome == "expert_no_show":
        return CallCharge(0, "expert_no_show", "The expert did not join: nothing is charged.")
    if outcome == "client_no_show":
        fee = percent_of(cap_minor, no_show_fee_percent)
        return CallCharge(
            fee,
            "client_no_show",
            f"The client did not join: the no-show fee is {no_show_fee_percent}% of "
            f"{money(cap_minor)} = {money(fee)}.",
        )
    if outcome != "completed":
        raise ValueError(f"unknown outcome {outcome!r}")
    if connected_seconds < FREE_SECONDS:
        return CallCharge(
            0,
            "under_a_minute",
            f"{connected_seconds} s connected: under {FREE_SECONDS} seconds is free, "
            "nothing is charged.",
        )
    if pricing == "fixed":
        amount = min(price_minor, cap_minor)
        return CallCharge(
            amount,
            "fixed",
            f"{connected_seconds} s connected → the fixed price, {money(amount)} "
            f"(a call of {FREE_SECONDS} seconds or more is charged in full).",
        )
    minutes = -(-billable_seconds // 60)  # every started minute of the booked time counts
    amount = min(cap_minor, price_minor * minutes)
    early = connected_seconds - billable_seconds
    before = (
        f"{connected_seconds} s connected, {early} s of it before the start (free); "
        if early
        else ""
    )
    in_booked = " in the booked time" if early else ""
    product = (
        f"{before}{billable_seconds} s connected{in_booked} → {minutes} started "
        f"minute{'s' if minutes != 1 else ''} × {money(price_minor)} = "
        f"{money(price_minor * minutes)}"
    )
    if amount < price_minor * minutes:
        product += f", capped at {money(cap_minor)} → {money(amount)}"
    return CallCharge(amount, "per_minute", product + ".")


def call_charge_of(inputs: dict[str, Any], currency: str) -> CallCharge | None:
    """The charge a call's settlement inputs give, explained in `currency`; None when the
    inputs are not a call's (a release, a cancellation fee, a staff decision)."""
    try:
        return call_charge(
            pricing=str(inputs["pricing"]),
            price_minor=int(inputs["price_minor"]),
            cap_minor=int(inputs["cap_minor"]),
            # Settlements from before the early-minutes rule stored one number: all of it
            # was inside the booked time.
            connected_seconds=int(inputs.get("connected_seconds", inputs["billable_seconds"])),
            billable_seconds=int(inputs["billable_seconds"]),
            outcome=str(inputs.get("outcome", "completed")),
            no_show_fee_percent=int(inputs.get("no_show_fee_percent", 0)),
            currency=currency,
        )
    except (KeyError, TypeError, ValueError):
        return None


def payout_after_refunds(*, payout_minor: int, refunded_minor: int, fee_percent: int) -> int:
    """The expert's share of a settlement (`payout_minor`, after the platform fee) once
    `refunded_minor` went back to the client: the refund comes out of the expert's share
    less the fee on it, which the platform gives back. Never below zero."""
    refunded_share = refunded_minor - platform_fee(refunded_minor, fee_percent)
    return max(payout_minor - refunded_share, 0)


def platform_fee(amount_minor: int, percent: int) -> int:
    """The platform's share of a settled amount; the expert is paid the rest."""
    return percent_of(amount_minor, percent)
