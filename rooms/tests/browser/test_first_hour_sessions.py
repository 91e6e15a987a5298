"""What a new user meets around their sessions, in real Chromium against the whole deployment:

- a call that ended before its booked end is under Past on "Your sessions" at once, for the
  client and for the expert, and its bill, rating and dispute are one click away;
- a visitor who is not signed in sees an expert's free times in their own zone (their
  browser's, here Los Angeles) with the zone named, from the first page they open; and once
  they book, the page that asks them to pay says until when (date, time and zone) the time is
  held.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from rooms.tests.browser.support import (
    BASE_URL,
    DEFAULT_TIMEOUT_MS,
    Booked,
    Contexts,
    Person,
    booked_session,
    log_in_with_form,
    off_the_page_loop,
)
from rooms.tests.e2e_services import Deployment

LOS_ANGELES = "America/Los_Angeles"
# Past the free first minute, so the call is charged and the charge can be disputed.
CALL_SECONDS = 65


# --- a call that ended early ------------------------------------------------------------------


def _call_recorded_and_ended(booked: Booked) -> int:
    """Both were in the room and their media flowed from the start; the expert then ended the
    call for everyone, most of the booked hour early. Written the way the room's own services
    record a call (as rooms/tests/factories.py's `room_closed_after_a_call` does): the call
    itself is what the room page's tests drive; here it is what comes after. Returns the
    client's charge."""
    from django.utils import timezone

    from billing.models import Settlement
    from rooms import services
    from rooms.models import MediaLink, Presence, Room

    room = Room.objects.select_related("expert").get(pk=booked.room_id)
    began = room.starts_at
    while (timezone.now() - began).total_seconds() < CALL_SECONDS:
        time.sleep(0.5)
    now = timezone.now()
    for user_id in (booked.expert.id, booked.client.id):
        Presence.objects.create(
            room=room, user_id=user_id, connection_id=f"first-hour-{user_id}",
            opened_at=began, last_heartbeat_at=now,
        )  # fmt: skip
    assert services.room_mark_live(room.pk, at=began)
    MediaLink.objects.create(
        room=room, client_id=booked.client.id, reported_by_id=booked.client.id,
        started_at=began, candidate_type="host",
    )  # fmt: skip
    closed = services.room_end_by_expert(room.pk, room.expert)
    assert closed.closed_at is not None
    assert (closed.ends_at - closed.closed_at).total_seconds() > 30 * 60, "not ended early"
    settlement = Settlement.objects.get(payment_id=booked.payment_id)
    assert settlement.amount_minor > 0, settlement.explanation
    return settlement.amount_minor


def test_a_call_ended_early_is_under_past_at_once_with_its_bill_rating_and_dispute(
    contexts: Contexts,
) -> None:
    booked = booked_session()
    charged = off_the_page_loop(_call_recorded_and_ended, booked)
    room_url = f"{BASE_URL}/r/{booked.room_id}/"

    client = contexts("client", booked.client).new_page()
    client.goto("/me/sessions/")
    row = client.locator(f"#booked-past-table tr[data-seat-id='{booked.seat_id}']")
    expect(row).to_be_visible()
    expect(row).to_contain_text("Ended: ended by the expert")
    expect(client.locator("#booked-upcoming-table")).to_have_count(0)

    row.locator("a.bill-link").click()
    expect(client).to_have_url(f"{room_url}#summary")
    expect(client.locator("#summary")).to_be_visible()
    expect(client.locator("#charge")).to_have_attribute("data-amount-minor", str(charged))

    client.go_back()
    row.locator("a.rating-link").click()
    expect(client).to_have_url(f"{room_url}#rating-form")
    expect(client.locator("#rating-form")).to_be_visible()

    client.go_back()
    row.locator("a.dispute-link").click()
    expect(client).to_have_url(f"{room_url}#dispute-path")
    expect(client.locator("#dispute-path")).to_contain_text("Dispute this charge")

    expert = contexts("expert", booked.expert).new_page()
    expert.goto("/me/sessions/")
    hosted = expert.locator(f"#hosting-past-table tr[data-room-id='{booked.room_id}']")
    expect(hosted).to_be_visible()
    expect(hosted).to_contain_text("Ended: ended by the expert")
    expect(expert.locator("#hosting-upcoming-table")).to_have_count(0)
    hosted.locator("a.summary-link").click()
    expect(expert).to_have_url(f"{room_url}#summary")
    expect(expert.locator("#payout")).to_be_visible()


# --- a visitor in Los Angeles -----------------------------------------------------------------


@pytest.fixture
def in_los_angeles(browser: Browser, deployment: Deployment) -> Iterator[BrowserContext]:
    """A browser whose clock is set to Los Angeles, with no cookie of Parley yet."""
    context = browser.new_context(base_url=BASE_URL, timezone_id=LOS_ANGELES)
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    yield context
    context.close()


def _bookable_offering() -> int:
    """An approved expert working 09:00–17:00 UTC every day (01:00–09:00 in Los Angeles in
    winter, 02:00–10:00 in summer), with a one-hour offering."""
    from rooms.tests.factories import OfferingFactory, expert_create, weekdays_available

    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    return OfferingFactory.create(expert=expert).pk


def _client_in_los_angeles() -> Person:
    from accounts.tests.factories import PASSWORD, UserFactory

    user = UserFactory.create(time_zone=LOS_ANGELES)
    return Person(user.pk, user.email, PASSWORD)


def _slot_times_shown(page: Page) -> list[tuple[str, str]]:
    """Each free time's button name ("Monday 7 December, 01:00": the date is visually hidden,
    the time shown) with the moment it books (ISO, from the form)."""
    rows: list[list[str]] = page.eval_on_selector_all(
        "ul.slot-list form",
        """(forms) => forms.map((form) => [
             form.querySelector('button').textContent.trim(),
             form.querySelector('input[name=starts_at]').value])""",
    )
    return [(shown, moment) for shown, moment in rows]


def _in_los_angeles(moment: str, pattern: str) -> str:
    return dt.datetime.fromisoformat(moment).astimezone(ZoneInfo(LOS_ANGELES)).strftime(pattern)


def test_a_visitor_in_los_angeles_sees_free_times_in_their_zone_from_the_first_page(
    in_los_angeles: BrowserContext,
) -> None:
    offering_id = _bookable_offering()
    page = in_los_angeles.new_page()
    loads: list[str] = []
    page.on("load", lambda loaded: loads.append(loaded.url))

    page.goto(f"/book/{offering_id}/")
    expect(page.locator("p.helptext")).to_have_text(f"Times are in {LOS_ANGELES}.")
    shown = _slot_times_shown(page)
    assert shown, "no free times on the page"
    assert [text for text, _ in shown] == [_in_los_angeles(m, "%A %-d %B, %H:%M") for _, m in shown]
    cookie = {c["name"]: c["value"] for c in in_los_angeles.cookies()}.get("tz")
    assert cookie == LOS_ANGELES
    # The first visit rendered the page once more, in the browser's zone; the next page is
    # rendered in it at once.
    assert len(loads) <= 2, loads
    loads.clear()
    page.goto("/experts/")
    expect(page.locator("html")).to_have_attribute("data-visitor-time-zone", LOS_ANGELES)
    assert len(loads) == 1, loads


def test_a_visitor_who_books_is_told_the_hold_with_its_date_time_and_zone(
    in_los_angeles: BrowserContext,
) -> None:
    from rooms.models import Seat

    offering_id = _bookable_offering()
    client = _client_in_los_angeles()
    page = in_los_angeles.new_page()
    page.goto(f"/book/{offering_id}/")
    expect(page.locator("p.helptext")).to_have_text(f"Times are in {LOS_ANGELES}.")
    _, moment = _slot_times_shown(page)[0]
    slot = f"ul.slot-list form:has(input[value='{moment}']) button"

    page.locator(slot).click()
    # Booking asks a visitor to log in first, then brings them back to the times.
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    log_in_with_form(page, client)
    expect(page.locator("p.helptext")).to_have_text(f"Times are in {LOS_ANGELES}.")
    page.locator(slot).click()

    expect(page).to_have_url(re.compile(r"/me/bookings/\d+/confirm/$"))
    seat = Seat.objects.get(client_id=client.id)
    until = _in_los_angeles(seat.reserved_until.isoformat(), "%A %-d %B %Y, %H:%M")
    expect(page.locator("#hold-until")).to_have_text(
        f"We hold this time for you until {until} ({LOS_ANGELES}). Pay to confirm it."
    )
    start = _in_los_angeles(moment, "%A %-d %B %Y, %H:%M")
    expect(page.locator("#booking-when")).to_contain_text(f"{start}–")
    expect(page.locator("#booking-when")).to_contain_text(f"({LOS_ANGELES})")


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC"])
def test_a_visitor_already_in_the_servers_zone_gets_each_page_once(
    browser: Browser, deployment: Deployment, zone: str
) -> None:
    """No reload where it would change nothing: what every other browser test's visitor
    (a context in UTC) meets, so their clicks never race a reload."""
    context = browser.new_context(base_url=BASE_URL, timezone_id=zone)
    try:
        page = context.new_page()
        loads: list[str] = []
        page.on("load", lambda loaded: loads.append(loaded.url))
        page.goto("/experts/")
        # The script has run (it writes the cookie), and nothing follows.
        page.wait_for_function("() => document.cookie.includes('tz=')")
        page.wait_for_timeout(500)
        assert len(loads) == 1, loads
    finally:
        context.close()
