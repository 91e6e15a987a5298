"""Reporting and blocking from the call (docs/CALL_PAGE.md, Report and Block): in real
Chromium, against the whole deployment, the client reports the expert and stays in the call,
then blocks the expert and both pages end; the expert's says only that the session ended."""

from __future__ import annotations

from playwright.sync_api import Browser, expect

from rooms.tests.browser.support import (
    Booked,
    Contexts,
    Person,
    booked_session,
    room_pages,
    wait_until,
)


def _display_name(person: Person) -> str:
    from accounts.models import User

    return User.objects.get(pk=person.id).display_name


def _reports(booked: Booked) -> list[tuple[str, int | None, int | None]]:
    from moderation.models import Report

    rows = Report.objects.filter(room_id=booked.room_id).values_list(
        "category", "reporter_id", "about_id"
    )
    return list(rows)


def test_a_client_reports_then_blocks_the_expert_mid_call_and_both_pages_end(
    contexts: Contexts, second_browser: Browser
) -> None:
    booked: Booked = booked_session()
    expert, client = room_pages(contexts, booked, second_browser)
    for side in (expert, client):
        side.open()
        side.devices_on()
        side.join()
    in_call = wait_until(
        expert.page,
        lambda: all(
            side.page.locator(f'#peers .peer[data-peer-id="{side.peer.id}"]').count() == 1
            for side in (expert, client)
        ),
        timeout=15,
    )
    assert in_call, f"not both in the call: {expert.describe()}; {client.describe()}"
    expert_name = _display_name(booked.expert)

    client.page.locator("#report-open").click()
    client.page.locator("#report-category").select_option("inappropriate")
    client.page.locator("#report-text").fill("Showed something unrelated and offensive.")
    client.page.locator("#report-send").click()
    expect(client.page.locator("#report-result")).to_have_attribute("data-result", "sent")
    expect(client.page.locator("#report-result")).to_contain_text("Sent to staff")
    client.page.locator("#report-cancel").click()
    expect(client.page.locator("#report-dialog")).to_be_hidden()
    expect(client.page.locator("#room")).to_have_attribute("data-phase", "call")
    assert _reports(booked) == [("inappropriate", booked.client.id, booked.expert.id)]

    client.page.locator("#block-open").click()
    dialog = client.page.locator("#block-dialog")
    expect(dialog).to_be_visible()
    expect(client.page.locator("#block-what")).to_contain_text("this call ends for you both")
    client.page.locator("#block-confirm").click()

    for side in (client, expert):
        expect(side.page.locator("#room")).to_have_attribute("data-phase", "ended")
        expect(side.page.locator("#end-reason")).to_be_visible(timeout=15_000)
    expect(dialog).to_be_hidden()
    expect(client.page.locator("#room-status")).to_have_text(f"You blocked {expert_name}.")
    expect(expert.page.locator("#room-status")).to_have_text("This session has ended.")
    # The blocked side is told nothing of the block; the blocker can undo it from the summary.
    assert "block" not in expert.page.locator("#room-status").inner_text().lower()
    expect(client.page.locator("#block-after")).to_contain_text(f"Unblock {expert_name}")
