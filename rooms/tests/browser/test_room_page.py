"""The room page (docs/CALL_PAGE.md) as people use it: real Chromium with fake camera and
microphone, against the whole deployment (PostgreSQL, Redis, coturn, Daphne, Celery) inside a
loopback-only network namespace. Every test books a fresh room for fresh people.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, WebSocket, expect

from rooms.tests.browser.support import (
    Booked,
    Contexts,
    RoomPage,
    Sample,
    SocketCut,
    booked_session,
    both_receiving_seconds,
    changes,
    first_frames_at,
    log_in_with_form,
    receiving_intervals,
    relative,
    room_pages,
    room_settlements_total,
    server_record,
    settlement_wait,
    stranger,
    udp_dropped,
    wait_until,
)
from rooms.tests.e2e_services import Deployment

# On loopback a plain Chromium-to-Chromium call decodes its first frame ~0.2 s after the
# offer (docs/OPERATIONS.md, WebRTC on one machine); the page, with its signaling, gets 3 s.
FIRST_FRAME_SECONDS = 3.0
OUTAGE_SECONDS = 8.0
# Video on both sides before the outage, and after it has resumed.
STEADY_SECONDS = 8.0
# The settlement is in whole seconds; the truth is measured from frames every 100 ms.
BILLING_TOLERANCE_SECONDS = 2.0
# Past the free first minute, so the charge is not zero.
CHARGED_CALL_SECONDS = 66.0
SELF_VIEW_PLAYING = (
    "() => { const v = document.querySelector('#self-view'); return [v.paused, v.currentTime]; }"  # noqa: E501
)


@pytest.fixture
def booked(deployment: Deployment) -> Booked:
    return booked_session()


def test_an_anonymous_visitor_logs_in_and_lands_back_in_the_room(
    contexts: Contexts, booked: Booked
) -> None:
    page = contexts("visitor").new_page()
    page.goto(booked.url)

    login = urlsplit(page.url)
    assert login.path == "/accounts/login/", f"not sent to the login page but to {page.url}"
    assert parse_qs(login.query).get("next") == [f"/r/{booked.room_id}/"], page.url
    with page.expect_response(lambda response: response.url == booked.url) as landed:
        log_in_with_form(page, booked.client)
    assert landed.value.status == 200
    page.wait_for_url(booked.url)


def test_a_logged_in_stranger_is_told_the_link_is_for_the_expert_and_booked_clients(
    contexts: Contexts, booked: Booked
) -> None:
    page = contexts("stranger", stranger()).new_page()
    response = page.goto(booked.url)

    assert response is not None and response.status == 403
    assert page.url == booked.url, "the refusal is the page itself, not a redirect"
    expect(page.locator("body")).to_contain_text(
        re.compile(r"link is for the expert and the clients booked", re.IGNORECASE)
    )


def test_without_camera_permission_the_page_says_how_to_allow_it_and_offers_other_ways_in(
    contexts: Contexts, booked: Booked, browser_without_fake_ui: Browser
) -> None:
    context = contexts(
        "client", booked.client, browser=browser_without_fake_ui, permissions=("microphone",)
    )
    page = context.new_page()
    page.goto(booked.url)
    page.locator("#devices-on").click()

    denied = page.locator("#devices-denied")
    expect(denied).to_be_visible()
    # How to re-enable it: says which permission, in more than a word or two.
    expect(denied).to_contain_text(re.compile(r"camera", re.IGNORECASE))
    assert len(denied.inner_text().strip()) >= 20, denied.inner_text()
    for other_way_in in ("#join-audio-only", "#join-no-devices"):
        expect(page.locator(other_way_in)).to_be_visible()
        expect(page.locator(other_way_in)).to_be_enabled()
    # The premise: this browser refuses the camera (and would give the microphone).
    assert page.evaluate(_GET_USER_MEDIA, {"video": True}) == "NotAllowedError"
    assert page.evaluate(_GET_USER_MEDIA, {"audio": True}) == "ok"
    # And the way in it offers works: in the call with the microphone only, no camera.
    page.locator("#join-audio-only").click()
    expect(page.locator("#room")).to_have_attribute("data-phase", "call")
    assert (
        page.evaluate("document.querySelector('#self-view').srcObject.getVideoTracks().length") == 0
    )
    assert (
        page.evaluate("document.querySelector('#self-view').srcObject.getAudioTracks().length") == 1
    )


_GET_USER_MEDIA = """async (constraints) => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    stream.getTracks().forEach((track) => track.stop());
    return 'ok';
  } catch (error) {
    return error.name;
  }
}"""


def test_expert_and_client_see_each_other_within_3_seconds_of_joining(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    expert, client, clicked = _call_started(contexts, booked, second_browser)

    seconds = {side.role: _first_frames(side) - clicked[side.role] for side in (expert, client)}
    message = (
        f"first video frame of the other, seconds after clicking #join: "
        f"{ {role: round(s, 2) for role, s in seconds.items()} } "
        f"(the expert clicked {clicked['client'] - clicked['expert']:.2f} s before the client)."
        f"\nPhase/peer tile/video, seconds after each clicked: expert "
        f"{changes(expert.samples(), clicked['expert'])}; client "
        f"{changes(client.samples(), clicked['client'])}"
    )
    print(message)
    assert max(seconds.values()) <= FIRST_FRAME_SECONDS, message


def test_the_start_of_a_call_never_shows_the_peer_as_reconnecting(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    """ICE reports the connection up a moment before the first media packet arrives: that is
    the call starting, not an outage, so neither tile blinks "reconnecting" on the way to
    "connected"."""
    expert, client, _ = _call_started(contexts, booked, second_browser)
    settled = wait_until(
        expert.page,
        lambda: all(
            side.statuses() and side.statuses()[-1][1] == "connected" for side in (expert, client)
        ),
        timeout=10,
    )
    seen = {side.role: [status for _, status in side.statuses()] for side in (expert, client)}
    assert settled, f"a tile never reached connected: {seen}"
    assert all("reconnecting" not in statuses for statuses in seen.values()), seen


def test_on_the_preflight_the_socket_waits_and_the_peer_sees_nobody_until_join(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    """Joining fast (docs/CALL_PAGE.md): the client's page opens its socket on the preflight,
    and the click sends `join` over it. Until then the expert, already in the call, sees
    nobody and the server has no presence of the client; then both see each other."""
    from rooms.models import Presence

    expert, client = room_pages(contexts, booked, second_browser)
    expert.open()
    expert.devices_on()
    expert.join()
    expect(expert.page.locator("#room")).to_have_attribute("data-phase", "call")

    sockets: list[WebSocket] = []
    frames: list[str] = []

    def sent(payload: bytes | str) -> None:
        frames.append(f"sent {payload!s}")

    def received(payload: bytes | str) -> None:
        frames.append(f"received {payload!s}")

    def opened(socket: WebSocket) -> None:
        sockets.append(socket)
        socket.on("framesent", sent)
        socket.on("framereceived", received)

    client.page.on("websocket", opened)
    client.open()
    client.devices_on()
    ready = wait_until(client.page, lambda: any('"ready"' in frame for frame in frames), 10)
    assert ready, f"no socket ready on the client's preflight: {[s.url for s in sockets]} {frames}"
    assert [urlsplit(s.url).query for s in sockets] == ["join=later"], [s.url for s in sockets]
    client.page.wait_for_timeout(1000)
    assert expert.page.locator("#peers .peer").count() == 0
    expect(expert.page.locator("#room-status")).to_have_text("Waiting for your client to join.")
    assert not Presence.objects.filter(room_id=booked.room_id, user_id=booked.client.id).exists()

    client.record()
    expert.record()
    client.join()
    flowing = wait_until(
        expert.page,
        lambda: all(first_frames_at(side.samples()) is not None for side in (expert, client)),
        timeout=15,
    )
    assert flowing, f"no video both ways after the join: {expert.describe()}; {client.describe()}"
    # The click used the socket that was waiting: one join on it, no second handshake.
    assert len(sockets) == 1, [s.url for s in sockets]
    assert sum('"type": "join"' in frame or '"type":"join"' in frame for frame in frames) == 1
    assert Presence.objects.filter(
        room_id=booked.room_id, user_id=booked.client.id, closed_at=None
    ).exists()


_VIDEO_SIZES = """() => {
  const link = [...window.parley.links.values()][0];
  const sender = link.pc.getSenders().find((s) => s.track && s.track.kind === 'video');
  const video = document.querySelector('#peers .peer video');
  return {
    sendScale: sender ? sender.getParameters().encodings[0].scaleResolutionDownBy ?? 1 : null,
    startingSmall: link.startingSmall,
    received: video ? [video.videoWidth, video.videoHeight] : null,
  };
}"""


# The size of the first frame of the other person's video the page showed, kept from the
# page's start (media events do not bubble, but a listener on the document sees them first).
_FIRST_FRAME_SIZE = """
document.addEventListener('loadedmetadata', (event) => {
  const video = event.target;
  if (window.__firstFrameSize || !video.closest || !video.closest('#peers .peer')) return;
  window.__firstFrameSize = [video.videoWidth, video.videoHeight];
}, true);
"""


def test_video_starts_small_for_the_first_frame_then_goes_to_full_resolution(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    """The first picture comes at the size the start of a call can carry (Chromium's
    bandwidth estimate starts near 300 kbit/s: a 720p sender's first frames are dropped), and
    the camera's full resolution follows once the estimate allows it (docs/CALL_PAGE.md)."""
    expert, client, clicked = _call_started(
        contexts, booked, second_browser, init_script=_FIRST_FRAME_SIZE
    )
    seen: dict[str, list[Any]] = {"expert": [], "client": []}

    def full_both_ways() -> bool:
        for side in (expert, client):
            seen[side.role].append(side.page.evaluate(_VIDEO_SIZES))
        return all(
            seen[role][-1]["sendScale"] == 1 and seen[role][-1]["received"][0] >= 640
            for role in seen
        )

    pages = (expert, client)
    full = wait_until(expert.page, full_both_ways, timeout=15, every=0.5)
    assert full, f"not at full resolution within 15 s of the first frames: {seen}"
    first = {side.role: side.page.evaluate("() => window.__firstFrameSize") for side in pages}
    print(f"first frames: {first}; from then on, every 0.5 s: {seen}")
    # Small when the first frames came: the camera's 1280 x 720 sent scaled down by 4 (what
    # the page does after that depends on how fast this machine is, not when it is sampled).
    assert first == {"expert": [320, 180], "client": [320, 180]}, (first, seen)


def test_in_the_call_each_sees_themselves_and_the_controls_without_scrolling(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    """On a laptop's screen (Playwright's 1280 x 720) the call fits: the other person's video,
    your own picture playing (Chromium pauses a muted autoplaying video that is out of view,
    which left a frozen self-view below the fold) and the controls to mute and leave."""
    expert, client, _ = _call_started(contexts, booked, second_browser)
    for side in (expert, client):
        page = side.page
        viewport = page.viewport_size
        assert viewport is not None
        for selector in (".peer video", "#self-view", "#mute", "#leave"):
            box = page.locator(selector).first.bounding_box()
            assert box is not None, f"{side.role}: {selector} is not shown"
            assert 0 <= box["y"] and box["y"] + box["height"] <= viewport["height"], (
                f"{side.role}: {selector} is out of view at {box} in {viewport}"
            )
        paused, first = page.evaluate(SELF_VIEW_PLAYING)
        time.sleep(1.0)
        paused_later, later = page.evaluate(SELF_VIEW_PLAYING)
        assert not paused and not paused_later and later > first, (
            f"{side.role}: the self-view is frozen (paused {paused}/{paused_later}, "
            f"at {first:.2f} s then {later:.2f} s)"
        )


def test_a_client_offline_for_8_seconds_resumes_in_place_and_the_gap_is_not_billed(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    expert, client, clicked = _call_started(contexts, booked, second_browser)
    both_since = max(_first_frames(expert), _first_frames(client))
    expert.page.wait_for_timeout(STEADY_SECONDS * 1000)
    navigations = {side.role: side.navigations for side in (expert, client)}

    with udp_dropped():
        client.page.context.set_offline(True)
        outage_start = time.time()
        try:
            expert.page.wait_for_timeout(OUTAGE_SECONDS * 1000)
        finally:
            client.page.context.set_offline(False)
    outage_end = time.time()

    # Both pages said so while it lasted (sampled every 100 ms; allow one late sample).
    during = (outage_start, outage_end + 0.5)
    client_saw = _first(
        client.samples(), during, lambda s: "reconnecting" in (s.phase, s.peer_status)
    )
    expert_saw = _first(expert.samples(), during, lambda s: s.peer_status == "reconnecting")
    assert client_saw is not None, (
        "the client's page never showed reconnecting (#room[data-phase=reconnecting] or the "
        f"expert's tile data-status=reconnecting) during the outage: {client.describe()}"
    )
    assert expert_saw is not None, (
        "the expert's page never showed the client's tile as reconnecting during the outage: "
        f"{expert.describe()}"
    )

    # Then the video comes back on both pages, in the same document.
    pages = (expert, client)
    wait_until(
        expert.page,
        lambda: all(_frames_after(side, outage_end) is not None for side in pages),
        timeout=20,
    )
    resumed_at = {side.role: _frames_after(side, outage_end) for side in pages}
    assert None not in resumed_at.values(), (
        f"video did not resume within 20 s of the outage's end (when it did: {resumed_at}): "
        f"{expert.describe()}; {client.describe()}"
    )
    expert.page.wait_for_timeout(STEADY_SECONDS * 1000)
    assert {side.role: side.navigations for side in (expert, client)} == navigations, (
        "a page was reloaded or navigated to resume"
    )

    resumed_text = ", ".join(
        f"{role} {at - both_since:.1f}" for role, at in resumed_at.items() if at is not None
    )
    _billed_as_received(
        expert, client, booked, both_since,
        f"#join clicked: expert {clicked['expert'] - both_since:.1f}, client "
        f"{clicked['client'] - both_since:.1f}; outage {outage_start - both_since:.1f}–"
        f"{outage_end - both_since:.1f}; reconnecting shown: client "
        f"{client_saw - both_since:.1f}, expert {expert_saw - both_since:.1f}; video back: "
        f"{resumed_text}",
    )  # fmt: skip


def test_a_media_report_written_into_a_dead_socket_goes_again_on_the_next_one(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    """The client's socket dies without closing just as the media drops, so the page's report
    that its media went down goes into a socket that will never deliver it. The page must send
    it again on the socket that replaces it, or the client's media link runs on through the
    outage and the outage is billed (Chromium's offline mode drops the frames it held now and
    then, which is how the test above first found it)."""
    cuts: list[SocketCut] = []
    expert, client, _ = _call_started(
        contexts, booked, second_browser, before_open=lambda side: cuts.append(SocketCut(side))
    )
    cut = cuts[0]
    both_since = max(_first_frames(expert), _first_frames(client))
    expert.page.wait_for_timeout(STEADY_SECONDS * 1000)

    cut.cut_at_next_ack()
    assert wait_until(client.page, cut.is_cut, timeout=8), (
        f"no heartbeat_ack reached the client's page in 8 s: {client.describe()}"
    )
    with udp_dropped():
        outage_start = time.time()
        reported = wait_until(
            client.page,
            lambda: any(
                m.get("type") == "media_state" and m.get("state") == "disconnected"
                for m in cut.swallowed
            ),
            timeout=6,
        )
        assert reported, (
            "the client's page did not report its media down into the dead socket within 6 s "
            f"of the outage (it swallowed {cut.swallowed_types()}): {client.describe()}"
        )
        expert.page.wait_for_timeout(max(0.0, outage_start + OUTAGE_SECONDS - time.time()) * 1000)
    outage_end = time.time()

    pages = (expert, client)
    wait_until(
        expert.page,
        lambda: all(_frames_after(side, outage_end) is not None for side in pages),
        timeout=20,
    )
    assert len(cut.routes) >= 2, (
        f"the client's page never gave the dead socket up for a new one: {client.describe()}"
    )
    assert all(_frames_after(side, outage_end) is not None for side in pages), (
        f"video did not resume within 20 s of the outage: {expert.describe()}; {client.describe()}"
    )
    expert.page.wait_for_timeout(STEADY_SECONDS * 1000)
    _billed_as_received(
        expert, client, booked, both_since,
        f"socket cut and UDP dropped {outage_start - both_since:.1f}–"
        f"{outage_end - both_since:.1f}; the dead socket swallowed {cut.swallowed_types()}; "
        f"sockets opened: {len(cut.routes)}",
    )  # fmt: skip


def _billed_as_received(
    expert: RoomPage, client: RoomPage, booked: Booked, both_since: float, story: str
) -> None:
    """The expert ends the call; the settlement bills what both pages received, to within
    BILLING_TOLERANCE_SECONDS. `story`: what the test did, in seconds after `both_since`."""
    ended_at = _end_for_all(expert)
    for side in (expert, client):
        expect(side.page.locator("#room")).to_have_attribute("data-phase", "ended")
    settlement = settlement_wait(booked.payment_id)
    billed = settlement.inputs["billable_seconds"]
    truth = both_receiving_seconds(expert, client, until=ended_at)
    message = (
        f"billed {billed} s; both pages received video for {truth:.1f} s.\n"
        f"Seconds after both pages first had video: {story}; ended "
        f"{ended_at - both_since:.1f}.\n"
        f"Video received by the expert: "
        f"{relative(receiving_intervals(expert.samples(), ended_at), both_since)}; "
        f"by the client: {relative(receiving_intervals(client.samples(), ended_at), both_since)}"
        f".\nServer: {server_record(booked, both_since)}.\n"
        f"Settlement: {settlement.explanation} {settlement.inputs}"
    )
    print(message)
    assert abs(billed - truth) <= BILLING_TOLERANCE_SECONDS, message


def test_when_the_expert_ends_the_call_both_pages_show_what_was_settled(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> None:
    expert, client, _ = _call_started(contexts, booked, second_browser)
    expert.page.wait_for_timeout(CHARGED_CALL_SECONDS * 1000)

    _end_for_all(expert)
    for side in (expert, client):
        expect(side.page.locator("#room")).to_have_attribute("data-phase", "ended")
    settlement = settlement_wait(booked.payment_id)
    # 1.00 EUR a started minute: a call of 66 s (and the second or two ending it takes) is two
    # started minutes.
    assert (settlement.amount_minor, settlement.rule) == (200, "per_minute"), (
        f"a {CHARGED_CALL_SECONDS:.0f} s call was settled as: {settlement.explanation} "
        f"{settlement.inputs}"
    )
    # 1:1: the client's page shows its seat's charge; the expert's the room's total.
    expect(client.page.locator("#charge")).to_have_attribute(
        "data-amount-minor", str(settlement.amount_minor), timeout=15_000
    )
    expect(expert.page.locator("#charge")).to_have_attribute(
        "data-amount-minor", str(room_settlements_total(booked.room_id)), timeout=15_000
    )


# --- steps ----------------------------------------------------------------------------------


def _call_started(
    contexts: Contexts,
    booked: Booked,
    second_browser: Browser,
    before_open: Callable[[Page], object] | None = None,
    init_script: str | None = None,
) -> tuple[RoomPage, RoomPage, dict[str, float]]:
    """Expert and client open the link, turn their devices on, see the preview play and join
    (the expert a moment before the client); returns once both receive the other's video,
    with when each clicked #join. `before_open` is given the client's tab before it opens;
    `init_script` runs in both pages before theirs."""
    expert, client = room_pages(contexts, booked, second_browser)
    if before_open is not None:
        before_open(client.page)
    if init_script is not None:
        for side in (expert, client):
            side.page.add_init_script(init_script)
    for side in (expert, client):
        side.open()
        side.devices_on()
        side.record()
    clicked = {side.role: side.join() for side in (expert, client)}
    flowing = wait_until(
        expert.page,
        lambda: all(first_frames_at(side.samples()) is not None for side in (expert, client)),
        timeout=15,
    )
    assert flowing, (
        f"no video both ways within 15 s of joining: {expert.describe()}; {client.describe()}"
    )
    return expert, client, clicked


def _first_frames(side: RoomPage) -> float:
    at = first_frames_at(side.samples())
    assert at is not None, side.describe()
    return at


def _frames_after(side: RoomPage, moment: float) -> float | None:
    """When the peer's frame count first moved after `moment`."""
    samples = side.samples()
    for before, after in zip(samples, samples[1:], strict=False):
        if after.at > moment and after.frames and after.frames != before.frames:
            return after.at
    return None


def _first(
    samples: list[Sample], within: tuple[float, float], shows: Callable[[Sample], bool]
) -> float | None:
    return next((s.at for s in samples if within[0] <= s.at <= within[1] and shows(s)), None)


def _end_for_all(expert: RoomPage) -> float:
    """The expert ends the call for everyone; returns when it was confirmed."""
    expert.page.locator("#end-for-all").click()
    expert.page.locator("#end-confirm").click()
    return time.time()


def test_too_early_counts_down_then_the_lobby_opens_without_a_reload(
    contexts: Contexts, booked: Booked
) -> None:
    # The lobby opens 10 minutes before the start: move the start to just after that.
    from django.utils import timezone

    from rooms.models import Room

    start = timezone.now() + dt.timedelta(minutes=10, seconds=5)
    Room.objects.filter(pk=booked.room_id).update(
        state="scheduled", opened_at=None, starts_at=start, ends_at=start + dt.timedelta(hours=1),
        blocked_from=start, blocked_until=start + dt.timedelta(hours=1),
    )  # fmt: skip
    page = contexts("client", booked.client).new_page()
    page.goto(booked.url)
    room = page.locator("#room")
    expect(room).to_have_attribute("data-room-state", "scheduled")
    expect(page.locator("#room-status")).to_contain_text("Too early")
    expect(page.locator("#countdown")).to_contain_text("Starts in 10:0")
    expect(page.locator("#join")).to_be_disabled()
    # The clock opens the lobby; the server opens the room at its next sweep, and the page
    # keeps knocking until it is let in (no reload).
    expect(page.locator("#join")).to_be_enabled(timeout=10_000)
    # (The no-devices Join is offered only once the browser refused the devices.)
    page.locator("#join").click()
    expect(room).to_have_attribute("data-phase", "call", timeout=25_000)
    expect(room).to_have_attribute("data-room-state", "open")
    expect(page.locator("#room-status")).to_contain_text("Waiting for the expert")


def test_a_canceled_session_says_so_and_offers_no_way_in(
    contexts: Contexts, booked: Booked
) -> None:
    from rooms.models import Room

    Room.objects.filter(pk=booked.room_id).update(state="canceled", cancel_reason="expert_canceled")
    page = contexts("client", booked.client).new_page()
    page.goto(booked.url)
    expect(page.locator("#room-status")).to_contain_text("canceled")
    expect(page.locator("#preflight")).to_be_hidden()


def test_the_connectivity_test_reaches_the_servers_webrtc_peer_and_gives_a_verdict(
    contexts: Contexts, booked: Booked
) -> None:
    page = contexts("client", booked.client).new_page()
    page.goto(booked.url)
    page.locator("#probe-run").click()
    result = page.locator("#probe-result")
    # ~5 s of pings after ICE (which waits up to 3 s for gathering on loopback).
    expect(result).to_have_attribute("data-verdict", re.compile("good|warning"), timeout=30_000)
    expect(result).to_contain_text("Round trip")
    expect(result).to_contain_text("% loss")
