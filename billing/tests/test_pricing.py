"""The pure pricing of a call (docs/RULES.md, What is billed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.pricing import (
    call_charge,
    call_charge_of,
    payout_after_refunds,
    percent_of,
    platform_fee,
)


def test_a_per_minute_call_bills_every_started_minute_and_says_it_in_money() -> None:
    charge = call_charge(
        pricing="per_minute",
        price_minor=100,
        cap_minor=6000,
        connected_seconds=73,
        billable_seconds=73,
        currency="EUR",
    )
    assert (charge.amount_minor, charge.rule) == (200, "per_minute")
    assert charge.explanation == "73 s connected → 2 started minutes × 1.00 EUR = 2.00 EUR."


def test_minutes_before_the_start_are_said_free_and_not_priced() -> None:
    charge = call_charge(
        pricing="per_minute",
        price_minor=100,
        cap_minor=6000,
        connected_seconds=650,
        billable_seconds=50,
        currency="EUR",
    )
    assert (charge.amount_minor, charge.rule) == (100, "per_minute")
    assert charge.explanation == (
        "650 s connected, 600 s of it before the start (free); 50 s connected in the booked "
        "time → 1 started minute × 1.00 EUR = 1.00 EUR."
    )


def test_a_per_minute_call_never_costs_more_than_the_cap() -> None:
    charge = call_charge(
        pricing="per_minute",
        price_minor=200,
        cap_minor=6000,
        connected_seconds=4 * 3600,
        billable_seconds=4 * 3600,
        currency="EUR",
    )
    assert charge.amount_minor == 6000
    assert charge.explanation == (
        "14400 s connected → 240 started minutes × 2.00 EUR = 480.00 EUR, "
        "capped at 60.00 EUR → 60.00 EUR."
    )


def test_every_explanation_speaks_money_and_the_free_minute() -> None:
    def explained(**inputs: object) -> str:
        base: dict[str, object] = {"price_minor": 9000, "cap_minor": 9000, "currency": "EUR"}
        # All of the call inside the booked time, as most calls are.
        connected = {"connected_seconds": inputs["billable_seconds"]}
        return call_charge(**{**base, **connected, **inputs}).explanation  # type: ignore[arg-type]

    assert explained(pricing="fixed", billable_seconds=73) == (
        "73 s connected → the fixed price, 90.00 EUR "
        "(a call of 60 seconds or more is charged in full)."
    )
    assert explained(pricing="per_minute", billable_seconds=59) == (
        "59 s connected: under 60 seconds is free, nothing is charged."
    )
    assert (
        explained(
            pricing="fixed", billable_seconds=0, outcome="client_no_show", no_show_fee_percent=50
        )
        == "The client did not join: the no-show fee is 50% of 90.00 EUR = 45.00 EUR."
    )
    assert explained(
        pricing="per_minute", billable_seconds=60, price_minor=1000, cap_minor=10_000
    ) == ("60 s connected → 1 started minute × 10.00 EUR = 10.00 EUR.")
    # A currency without minor units is said as it is.
    assert explained(
        pricing="per_minute", billable_seconds=61, price_minor=100, cap_minor=10_000, currency="JPY"
    ) == ("61 s connected → 2 started minutes × 100 JPY = 200 JPY.")


def test_an_explanation_without_a_currency_names_its_minor_units() -> None:
    charge = call_charge(
        pricing="per_minute",
        price_minor=200,
        cap_minor=6000,
        connected_seconds=61,
        billable_seconds=61,
    )
    assert charge.explanation == (
        "61 s connected → 2 started minutes × 200 (minor units) = 400 (minor units)."
    )


def test_a_settlements_inputs_give_its_charge_again_and_other_inputs_none() -> None:
    inputs = {
        "pricing": "per_minute",
        "price_minor": 100,
        "cap_minor": 6000,
        "billable_seconds": 73,
        "outcome": "completed",
        "no_show_fee_percent": 0,
    }
    charge = call_charge_of(inputs, "EUR")
    assert charge is not None and charge.amount_minor == 200
    assert call_charge_of({"reason": "reservation expired"}, "EUR") is None
    assert call_charge_of({**inputs, "pricing": "hourly"}, "EUR") is None


def test_a_refund_comes_out_of_the_experts_share_less_the_fee_on_it() -> None:
    # 2.00 EUR charged, 15 % fee: the share is 1.70; after 1.00 back to the client, 0.85.
    assert payout_after_refunds(payout_minor=170, refunded_minor=0, fee_percent=15) == 170
    assert payout_after_refunds(payout_minor=170, refunded_minor=100, fee_percent=15) == 85
    assert payout_after_refunds(payout_minor=170, refunded_minor=200, fee_percent=15) == 0


def test_under_a_minute_connected_is_free_whatever_the_pricing() -> None:
    for pricing in ("fixed", "per_minute"):
        charge = call_charge(
            pricing=pricing,
            price_minor=5000,
            cap_minor=5000,
            connected_seconds=59,
            billable_seconds=59,
        )
        assert (charge.amount_minor, charge.rule) == (0, "under_a_minute")


def test_early_minutes_count_for_the_free_minute_but_are_not_priced_per_minute() -> None:
    """10 min connected before the start and 50 s after: a call, not a failed one. Per minute,
    one started minute of the booked time; the fixed price, in full."""
    per_minute = call_charge(
        pricing="per_minute", price_minor=200, cap_minor=6000,
        connected_seconds=650, billable_seconds=50,
    )  # fmt: skip
    fixed = call_charge(
        pricing="fixed", price_minor=9000, cap_minor=9000,
        connected_seconds=650, billable_seconds=50,
    )  # fmt: skip
    assert (per_minute.amount_minor, per_minute.rule) == (200, "per_minute")
    assert "600 s of it before the start (free)" in per_minute.explanation
    assert (fixed.amount_minor, fixed.rule) == (9000, "fixed")
    only_early = call_charge(
        pricing="per_minute", price_minor=200, cap_minor=6000,
        connected_seconds=120, billable_seconds=0,
    )  # fmt: skip
    assert only_early.amount_minor == 0
    with pytest.raises(ValueError, match="cannot exceed"):
        call_charge(
            pricing="fixed", price_minor=1, cap_minor=1, connected_seconds=59, billable_seconds=60
        )


def test_a_fixed_price_is_due_in_full_from_the_first_minute() -> None:
    charge = call_charge(
        pricing="fixed", price_minor=9000, cap_minor=9000, connected_seconds=60, billable_seconds=60
    )
    assert (charge.amount_minor, charge.rule) == (9000, "fixed")


def test_a_client_no_show_costs_the_no_show_fee_and_an_expert_no_show_nothing() -> None:
    client = call_charge(
        pricing="fixed",
        price_minor=9000,
        cap_minor=9000,
        connected_seconds=0,
        billable_seconds=0,
        outcome="client_no_show",
        no_show_fee_percent=50,
    )
    expert = call_charge(
        pricing="fixed",
        price_minor=9000,
        cap_minor=9000,
        connected_seconds=0,
        billable_seconds=0,
        outcome="expert_no_show",
    )
    assert (client.amount_minor, client.rule) == (4500, "client_no_show")
    assert (expert.amount_minor, expert.rule) == (0, "expert_no_show")


def test_unknown_pricing_outcome_or_negative_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown pricing"):
        call_charge(
            pricing="hourly", price_minor=1, cap_minor=1, connected_seconds=60, billable_seconds=60
        )
    with pytest.raises(ValueError, match="unknown outcome"):
        call_charge(
            pricing="fixed",
            price_minor=1,
            cap_minor=1,
            connected_seconds=60,
            billable_seconds=60,
            outcome="late",
        )
    with pytest.raises(ValueError, match="≥ 0"):
        call_charge(
            pricing="fixed", price_minor=1, cap_minor=1, connected_seconds=-1, billable_seconds=-1
        )


@given(
    rate=st.integers(0, 10_000),
    minutes=st.integers(1, 180),
    seconds=st.integers(0, 6 * 3600),
)
def test_a_per_minute_charge_stays_within_zero_and_the_cap_and_grows_with_time(
    rate: int, minutes: int, seconds: int
) -> None:
    cap = rate * minutes
    charge = call_charge(
        pricing="per_minute",
        price_minor=rate,
        cap_minor=cap,
        connected_seconds=seconds,
        billable_seconds=seconds,
    )
    later = call_charge(
        pricing="per_minute",
        price_minor=rate,
        cap_minor=cap,
        connected_seconds=seconds + 1,
        billable_seconds=seconds + 1,
    )
    assert 0 <= charge.amount_minor <= cap
    assert charge.amount_minor <= later.amount_minor
    if seconds >= 60:
        assert charge.amount_minor == min(cap, rate * -(-seconds // 60))


@given(amount=st.integers(0, 10**9), percent=st.integers(0, 100))
def test_the_platform_fee_and_the_experts_share_add_up_to_the_amount(
    amount: int, percent: int
) -> None:
    fee = platform_fee(amount, percent)
    assert 0 <= fee <= amount
    assert fee == percent_of(amount, percent)
