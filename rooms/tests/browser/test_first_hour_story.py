"""The room's story in admin as a staff member reads it, in real Chromium: its times are in the
staff member's own zone and say which, and its payment link stands out by more than colour
(underlined, and readable: at least 4.5:1 against its background)."""

from __future__ import annotations

import zoneinfo

from playwright.sync_api import expect

from rooms.tests.browser.support import Contexts, Person, booked_session, log_in_with_form

ZONE = "America/Los_Angeles"

# The link's colour against the nearest background that is not transparent (WCAG's relative
# luminance and contrast ratio).
_LINK_LOOK = """(link) => {
  const rgb = (text) => text.match(/[\\d.]+/g).slice(0, 4).map(Number);
  const luminance = ([r, g, b]) => [r, g, b]
    .map((v) => v / 255)
    .map((v) => (v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4))
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  let node = link;
  let background = [255, 255, 255];
  while (node) {
    const color = rgb(getComputedStyle(node).backgroundColor);
    if (color.length < 4 || color[3] > 0) { background = color; break; }
    node = node.parentElement;
  }
  const [light, dark] = [luminance(rgb(getComputedStyle(link).color)), luminance(background)]
    .sort((a, b) => b - a);
  return {
    decoration: getComputedStyle(link).textDecorationLine,
    contrast: (light + 0.05) / (dark + 0.05),
  };
}"""


def _staff_in(zone: str) -> tuple[Person, str]:
    """A staff member living in `zone`, with an authenticator; returns them and its secret."""
    from accounts.tests.factories import PASSWORD, StaffFactory, totp_enable

    staff = StaffFactory.create(time_zone=zone)
    return Person(staff.pk, staff.email, PASSWORD), totp_enable(staff)


def _first_entry_clock(room_id: int, zone: str) -> str:
    from moderation.story import room_story

    first = room_story(room_id).entries[0].at
    return f"{first.astimezone(zoneinfo.ZoneInfo(zone)):%H:%M:%S}"


def test_the_story_tells_times_in_the_staff_members_zone_and_underlines_its_payment_link(
    contexts: Contexts,
) -> None:
    from accounts.tests.helpers import totp_code

    booked = booked_session()
    staff, secret = _staff_in(ZONE)
    page = contexts("staff").new_page()
    page.goto(f"/admin/rooms/room/{booked.room_id}/story/")
    log_in_with_form(page, staff)
    page.locator('input[name="code"]').fill(totp_code(secret))
    page.locator('input[name="code"]').press("Enter")
    expect(page.locator("table.story")).to_be_visible()

    expect(page.locator("table.story thead th").nth(1)).to_have_text(f"Time ({ZONE})")
    expect(page.locator("form.story-filter .help")).to_contain_text(f"Times are in {ZONE}")
    expect(page.locator("table.story td.time").first).to_contain_text(
        _first_entry_clock(booked.room_id, ZONE)
    )

    link = page.locator(".story-seats a", has_text=f"#{booked.payment_id}")
    expect(link).to_be_visible()
    look = link.evaluate(_LINK_LOOK)
    assert "underline" in look["decoration"], look
    assert look["contrast"] >= 4.5, look
