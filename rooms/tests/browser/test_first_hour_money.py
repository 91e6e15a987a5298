"""The money a person reads, in real Chromium against the whole deployment: the bill in money
after a call, the printable receipt, the expert's earnings after a refund (with the month's
total and the CSV), and the pay page's answers to a declined card, an expired reservation, a
booking already paid, and a slot taken meanwhile."""

from __future__ import annotations

import csv
import io
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from typing import Any

from playwright.sync_api import Page, expect

from rooms.tests.browser.support import (
    Booked,
    Contexts,
    Person,
    booked_session,
    off_the_page_loop,
    settlement_wait,
)

TEST_CARD = "4242 4242 4242 4242"
DECLINED_CARD = "4000 0000 0000 0002"


# --- the database -------------------------------------------------------------------------------


def _call_of(booked: Booked, seconds: int) -> None:
    """Both in the room, media up for `seconds`, then the expert ends it: the room's close
    settles the seat and the worker captures it."""
    from django.utils import timezone

    from accounts.models import User
    from rooms import services
    from rooms.models import MediaLink, Presence, Room

    now = timezone.now()
    # The whole call inside the booked time (the early minutes are free, which is another
    # test's subject): the session started a minute before the call did.
    start = now - timedelta(seconds=seconds + 60)
    Room.objects.filter(pk=booked.room_id, starts_at__gt=start).update(
        starts_at=start, blocked_from=start
    )
    room = Room.objects.get(pk=booked.room_id)
    for person in (booked.expert, booked.client):
        Presence.objects.create(
            room=room,
            user_id=person.id,
            connection_id=f"money-{room.pk}-{person.id}",
            opened_at=now - timedelta(seconds=seconds + 5),
            last_heartbeat_at=now,
        )
    services.room_mark_live(room.pk, at=now - timedelta(seconds=seconds + 5))
    MediaLink.objects.create(
        room=room,
        client_id=booked.client.id,
        reported_by_id=booked.client.id,
        started_at=now - timedelta(seconds=seconds),
        ended_at=now,
    )
    services.room_end_by_expert(room.pk, User.objects.get(pk=booked.expert.id), now=now)


def _captured(payment_id: int, timeout: float = 20.0) -> None:
    """Wait until the worker has captured the charge at the provider."""
    from billing.models import Payment, PaymentState

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Payment.objects.filter(pk=payment_id, state=PaymentState.CAPTURED).exists():
            return
        time.sleep(0.2)
    state = Payment.objects.get(pk=payment_id).state
    raise AssertionError(f"payment {payment_id} not captured within {timeout:.0f} s: {state}")


def _person(user: Any) -> Person:
    from accounts.tests.factories import PASSWORD

    return Person(user.pk, user.email, PASSWORD)


def _offering_with_free_hours() -> Any:
    """An approved expert in UTC, free every day 00:00–23:00, with a 60-minute fixed-price
    offering of 120.00 EUR."""
    from rooms.tests.factories import OfferingFactory, expert_create, weekdays_available

    expert = expert_create(time_zone="UTC")
    weekdays_available(expert, start=clock(0), end=clock(23))
    return OfferingFactory.create(expert=expert)


def _tomorrow_at(hour: int) -> datetime:
    from django.utils import timezone

    day = timezone.now().astimezone(UTC).date() + timedelta(days=1)
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _reserved(offering: Any, hour: int = 12) -> Any:
    """A new client's reservation, waiting for payment, tomorrow at `hour`:00 UTC."""
    from accounts.tests.factories import UserFactory
    from rooms import services

    client = UserFactory.create(time_zone="UTC")
    return services.booking_reserve(client, offering, _tomorrow_at(hour))


def _fill_card(page: Page, number: str) -> None:
    page.locator('input[name="number"]').fill(number)
    page.locator('input[name="expiry"]').fill("12/39")
    page.locator('input[name="cvc"]').fill("123")


# --- the bill and the receipt -------------------------------------------------------------------


def test_the_after_call_summary_says_the_bill_in_money(contexts: Contexts) -> None:
    booked = booked_session()
    off_the_page_loop(_call_of, booked, seconds=73)
    settlement_wait(booked.payment_id)

    page = contexts("client", booked.client).new_page()
    page.goto(booked.url)
    breakdown = page.locator("#breakdown")
    expect(breakdown).to_contain_text("73 s connected → 2 started minutes × 1.00 EUR = 2.00 EUR.")
    expect(breakdown).not_to_contain_text("× 100")
    expect(page.locator("#summary")).to_contain_text("under 60 seconds connected is free")
    expect(page.locator("#charge")).to_have_text("2.00 EUR")


def test_the_receipt_shows_the_facts_of_the_charge_and_prints_only_itself(
    contexts: Contexts,
) -> None:
    booked = booked_session()
    off_the_page_loop(_call_of, booked, seconds=73)
    _captured(booked.payment_id)

    page = contexts("client", booked.client).new_page()
    page.goto(booked.url)
    page.locator("#summary a.receipt-link").click()
    receipt = page.locator("#receipt")
    expect(receipt).to_contain_text("Receipt P-")
    expect(page.locator("#receipt-seconds")).to_have_text("73 s")
    expect(page.locator("#receipt-explanation")).to_have_text(
        "73 s connected → 2 started minutes × 1.00 EUR = 2.00 EUR."
    )
    expect(page.locator("#receipt-rule")).to_contain_text("Under 60 seconds connected is free")
    expect(page.locator("#receipt-charged")).to_have_text("2.00 EUR")
    # The hold was 60 minutes at 1.00 EUR: the rest of it went back to the card.
    expect(page.locator("#receipt-released")).to_have_text("58.00 EUR")
    expect(page.locator("#receipt-when")).to_contain_text("(UTC)")

    page.emulate_media(media="print")
    expect(receipt).to_be_visible()
    for hidden in (".site-header", ".site-footer", "#receipt-print"):
        expect(page.locator(hidden)).to_be_hidden()

    # The expert, or anyone else, is refused the client's receipt.
    other = contexts("expert", booked.expert).new_page()
    response = other.goto(page.url)
    assert response is not None and response.status == 403


# --- the expert's earnings ----------------------------------------------------------------------


def test_earnings_after_a_refund_show_the_reduced_share_the_month_total_and_the_csv(
    contexts: Contexts,
) -> None:
    from accounts.models import User
    from billing import services as billing

    booked = booked_session()
    off_the_page_loop(_call_of, booked, seconds=73)
    _captured(booked.payment_id)
    billing.payment_refund(
        booked.payment_id, amount_minor=100, currency="EUR", reason="Video froze", actor=None
    )
    client_name = User.objects.get(pk=booked.client.id).display_name
    expert_name = User.objects.get(pk=booked.expert.id).display_name

    page = contexts("expert", booked.expert).new_page()
    page.goto("/me/payouts/")
    row = page.locator(f'tr.earning[data-payment="{booked.payment_id}"]')
    # 2.00 EUR charged, 1.00 refunded: 15 % of the 1.00 kept is the fee, 0.85 the share.
    expect(row.locator(".share")).to_have_text("0.85 EUR")
    expect(row).to_contain_text(f"with {client_name}")
    expect(row).not_to_contain_text(expert_name)
    expect(page.locator("tr.month-total").first).to_contain_text("0.85 EUR")

    with page.expect_download() as download_info:
        page.locator("#earnings-csv").click()
    download = download_info.value
    assert download.suggested_filename.startswith("parley-earnings-")
    path = download.path()
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    [ours] = [r for r in rows if r["Client"] == client_name]
    assert (ours["Charged"], ours["Refunded"], ours["Your share"]) == ("2.00", "1.00", "0.85")


# --- the pay page -------------------------------------------------------------------------------


def test_a_declined_card_is_told_once(contexts: Contexts) -> None:
    seat = _reserved(_offering_with_free_hours())
    page = contexts("client", _person(seat.client)).new_page()
    page.goto(f"/pay/{seat.payment_id}/")
    _fill_card(page, DECLINED_CARD)
    page.locator('main form:has(input[name="number"]) button[type="submit"]').click()
    expect(page.get_by_text("Your card was declined. Try another card.").first).to_be_visible()
    # Said once: not again by the form's own error list, nor as "the last attempt failed".
    assert page.locator("main").inner_text().count("Your card was declined") == 1


def test_a_card_sent_after_the_reservation_expired_is_told_so_with_another_time_to_pick(
    contexts: Contexts,
) -> None:
    from django.utils import timezone

    from rooms import services

    offering = _offering_with_free_hours()
    seat = _reserved(offering)
    page = contexts("client", _person(seat.client)).new_page()
    page.goto(f"/pay/{seat.payment_id}/")
    _fill_card(page, TEST_CARD)
    # The client is slow: the reservation lapses while the page is open.
    off_the_page_loop(services.reservations_expire, now=timezone.now() + timedelta(minutes=30))
    page.locator('main form:has(input[name="number"]) button[type="submit"]').click()
    expect(page.locator("main")).to_contain_text("no longer waiting for payment")
    expect(page.locator("main")).to_contain_text("nothing was charged")
    page.get_by_role("link", name="Pick another time").click()
    expect(page.locator("#offerings")).to_be_visible()
    expect(page.locator(".cards")).to_contain_text(offering.title)


def test_a_card_sent_to_a_booking_already_paid_is_told_so(contexts: Contexts) -> None:
    from billing.services import payment_local_card

    seat = _reserved(_offering_with_free_hours())
    page = contexts("client", _person(seat.client)).new_page()
    page.goto(f"/pay/{seat.payment_id}/")
    _fill_card(page, TEST_CARD)
    # Paid meanwhile in another tab.
    payment_local_card(seat.payment_id, card_number=TEST_CARD.replace(" ", ""))
    page.locator('main form:has(input[name="number"]) button[type="submit"]').click()
    expect(page.locator("main")).to_contain_text("This booking is paid")
    expect(page.locator('input[name="number"]')).to_have_count(0)


def test_a_slot_taken_meanwhile_offers_the_nearest_times_in_time_order(
    contexts: Contexts,
) -> None:
    from accounts.tests.factories import UserFactory
    from rooms import services

    offering = _offering_with_free_hours()
    wanted = _tomorrow_at(12)
    client = UserFactory.create(time_zone="UTC")
    page = contexts("client", _person(client)).new_page()
    page.goto(f"/book/{offering.pk}/?from={wanted:%Y-%m-%d}")
    button = page.locator(f'form:has(input[name="starts_at"][value="{wanted.isoformat()}"]) button')
    expect(button).to_be_visible()
    # Someone else takes it while this page is open.
    services.booking_reserve(UserFactory.create(time_zone="UTC"), offering, wanted)
    button.click()
    alternatives = page.locator('section[aria-labelledby="alternatives"] input[name="starts_at"]')
    expect(alternatives.first).to_be_attached()
    values = [
        datetime.fromisoformat(v)
        for v in alternatives.evaluate_all("(els) => els.map(e => e.value)")
    ]
    assert len(values) >= 3, values
    assert values == sorted(values), values
