"""The room page as a newcomer first meets it (docs/CALL_PAGE.md): what is hidden stays hidden,
a Join that cannot be used looks it, and a call that goes live in the lobby, before its start,
shows and bills only the booked time (the early minutes are free; docs/ARCHITECTURE.md,
Metering). Real Chromium against the whole deployment, as in test_room_page.py.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from rooms.tests.browser.support import (
    Booked,
    Contexts,
    booked_session,
    room_pages,
    settlement_wait,
    wait_until,
)
from rooms.tests.e2e_services import Deployment

SESSION_MINUTES = 15
# How far ahead of the start the test moves the session: the two pages join and connect, and
# stay connected for more than a paid minute, all before the start.
EARLY_SECONDS = 105
# Past the free first minute: a page that counted the early minutes would show a cost by now.
CONNECTED_BEFORE_COST_SECONDS = 63


@pytest.fixture
def booked(deployment: Deployment) -> Booked:
    return booked_session()


def _session_moved(booked: Booked, *, starts_in: dt.timedelta, state: str, minutes: int) -> float:
    """Give the booked room a new start `starts_in` from now and a length of `minutes`, in
    `state`; returns the start as a `time.time()`."""
    from django.utils import timezone

    from rooms.models import Room

    start = timezone.now() + starts_in
    end = start + dt.timedelta(minutes=minutes)
    Room.objects.filter(pk=booked.room_id).update(
        state=state, starts_at=start, ends_at=end, blocked_from=start, blocked_until=end,
        **({"opened_at": None} if state == "scheduled" else {}),
    )  # fmt: skip
    return start.timestamp()


# The look of a button, disabled and then (for a moment) enabled.
_LOOKS = """(selector) => {
  const button = document.querySelector(selector);
  const look = () => {
    const style = getComputedStyle(button);
    return {background: style.backgroundColor, color: style.color, border: style.borderColor,
            cursor: style.cursor, opacity: style.opacity};
  };
  const wasDisabled = button.disabled;
  button.disabled = true;
  const disabled = look();
  button.disabled = false;
  const enabled = look();
  button.disabled = wasDisabled;
  return {disabled, enabled};
}"""


def test_before_permission_nothing_hidden_shows_and_the_disabled_join_looks_disabled(
    contexts: Contexts, booked: Booked
) -> None:
    # The lobby opens 10 minutes before the start: half an hour ahead, Join is off.
    _session_moved(booked, starts_in=dt.timedelta(minutes=30), state="scheduled", minutes=60)
    page = contexts("client", booked.client).new_page()
    page.goto(booked.url)
    expect(page.locator("#room")).to_have_attribute("data-room-state", "scheduled")

    # Nothing asked the browser for devices yet: no empty device panel, no other ways in.
    expect(page.locator("#devices")).to_be_hidden()
    expect(page.locator("#devices-denied")).to_be_hidden()
    for fallback in ("#join-audio-only", "#join-no-devices"):
        expect(page.locator(fallback)).to_be_hidden()
    _assert_hidden_by_style(page, "#devices", "#join-audio-only", "#join-no-devices")

    # The Join button is there, disabled, and looks it.
    join = page.locator("#join")
    expect(join).to_be_visible()
    expect(join).to_be_disabled()
    looks: dict[str, dict[str, str]] = page.evaluate(_LOOKS, "#join")
    assert looks["disabled"]["cursor"] == "not-allowed", looks
    differs = [
        key for key in ("background", "color") if looks["disabled"][key] != looks["enabled"][key]
    ]
    assert differs, f"the disabled Join looks like the working one: {looks}"
    # A click on it does nothing.
    box = join.bounding_box()
    assert box is not None
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_timeout(500)
    expect(page.locator("#room")).to_have_attribute("data-phase", "lobby")
    expect(page.locator("#call")).to_be_hidden()

    # Once the camera is on, its panel shows; the fallbacks are still not needed.
    page.locator("#devices-on").click()
    expect(page.locator("#devices")).to_be_visible()
    expect(page.locator("#preview")).to_be_visible()
    for fallback in ("#join-audio-only", "#join-no-devices"):
        expect(page.locator(fallback)).to_be_hidden()


def _assert_hidden_by_style(page: Page, *selectors: str) -> None:
    """Each element has `hidden` and the stylesheet really hides it (display: none)."""
    shown: dict[str, Any] = page.evaluate(
        """(selectors) => Object.fromEntries(selectors.map((selector) => {
             const element = document.querySelector(selector);
             return [selector, [element.hidden, getComputedStyle(element).display]];
           }))""",
        list(selectors),
    )
    wrong = {selector: v for selector, v in shown.items() if v != [True, "none"]}
    assert not wrong, f"hidden elements the CSS still displays ([hidden, display]): {wrong}"


def _clock_seconds(text: str) -> int:
    """ "14:59" or "1:02:03" → seconds."""
    parts = [int(part) for part in text.strip().split(":")]
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return seconds


def test_a_15_minute_session_joined_early_counts_and_bills_only_its_booked_time(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    start = _session_moved(
        booked, starts_in=dt.timedelta(seconds=EARLY_SECONDS), state="open",
        minutes=SESSION_MINUTES,
    )  # fmt: skip
    expert, client = room_pages(contexts, booked, second_browser)
    for side in (expert, client):
        side.open()
        # In the lobby before the start: when it starts, and that waiting is free.
        expect(side.page.locator("#countdown")).to_contain_text("Starts in")
        expect(side.page.locator("#countdown")).to_contain_text("time before the start is free")
        side.devices_on()
        side.join()
    for side in (expert, client):
        expect(side.page.locator("#room")).to_have_attribute("data-room-state", "live")
        expect(side.page.locator(f'.peer[data-peer-id="{side.peer.id}"]')).to_have_attribute(
            "data-status", "connected", timeout=15_000
        )
    connected_at = time.time()
    assert connected_at < start - 20, (
        f"the call connected only {start - connected_at:.0f} s before the start: too late for "
        "this test's premise"
    )

    # Live before the start: the booked time has not begun, and all of it remains.
    for side in (expert, client):
        page = side.page
        before = page.locator("#before-start")
        expect(before).to_be_visible()
        expect(before).to_contain_text(re.compile(r"Starts in \d+:\d\d"))
        expect(before).to_contain_text("time before the start is free")
        expect(page.locator("#room-status")).to_contain_text("ahead of the start")
        expect(page.locator("#elapsed")).to_have_text("not started")
        remaining = _clock_seconds(page.locator("#remaining").inner_text())
        assert remaining <= SESSION_MINUTES * 60, (
            f"the {side.role} page shows {remaining} s remaining of a {SESSION_MINUTES}-minute "
            "session"
        )
        assert remaining >= SESSION_MINUTES * 60 - 1, remaining

    # Connected for more than a paid minute, all of it before the start: nothing costs yet.
    cost_checked = connected_at + CONNECTED_BEFORE_COST_SECONDS
    client.page.wait_for_timeout(max(0.0, cost_checked - time.time()) * 1000)
    assert time.time() < start - 1, "the start came before the running cost could be checked"
    for side in (expert, client):
        expect(side.page.locator("#running-cost")).to_have_text(re.compile(r"about \D*0[.,]00"))
        expect(side.page.locator("#before-start")).to_be_visible()

    # The start passes: the booked time counts from it.
    wait_until(client.page, lambda: time.time() >= start + 3, timeout=EARLY_SECONDS)
    for side in (expert, client):
        page = side.page
        expect(page.locator("#before-start")).to_be_hidden()
        expect(page.locator("#room-status")).to_have_text("Live.")
        elapsed = _clock_seconds(page.locator("#elapsed").inner_text())
        remaining = _clock_seconds(page.locator("#remaining").inner_text())
        since_start = time.time() - start
        assert abs(elapsed - since_start) <= 2, (elapsed, since_start)
        assert abs(remaining - (SESSION_MINUTES * 60 - since_start)) <= 2, (remaining, since_start)

    # The expert ends it a few seconds after the start: the bill counts only those seconds.
    expert.page.locator("#end-for-all").click()
    expert.page.locator("#end-confirm").click()
    ended_at = time.time()
    settlement = settlement_wait(booked.payment_id)
    billed = settlement.inputs["billable_seconds"]
    assert billed <= ended_at - start + 1, (
        f"billed {billed} s for a call that was live {ended_at - connected_at:.0f} s, "
        f"{ended_at - start:.0f} s of them after the start: {settlement.inputs}"
    )
    # Over a minute connected in all, so not a failed call; only the started minute inside
    # the booked time is priced, the early minutes are free.
    assert settlement.inputs["connected_seconds"] >= 60, settlement.inputs
    rate = settlement.inputs["price_minor"]
    assert (settlement.rule, settlement.amount_minor) == ("per_minute", rate), (
        settlement.explanation
    )
    assert "before the start (free)" in settlement.explanation
