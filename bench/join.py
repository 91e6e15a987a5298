"""Time from clicking Join on the room page (docs/CALL_PAGE.md) to the first remote video frame,
against a bare two-page WebRTC connection measured in the same run.

Everything runs inside a private network namespace that has only loopback, so every packet,
WebRTC's included, stays on 127.0.0.1: started outside one, the bench re-executes itself under
``unshare -n`` (which needs root). Inside, it starts the whole deployment the browser tests use
(rooms/tests/e2e_services.py: a throwaway PostgreSQL cluster, Redis, coturn, one Daphne on
127.0.0.1:8101 and a Celery worker with beat), migrates it, and launches Debian's Chromium
twice with the flags of docs/OPERATIONS.md and fake camera and microphone
(rooms/tests/browser/support.py): one browser for the expert's side, one for the client's.

**Why two browsers.** People join from their own machines, each with a camera of its own. In
one Chromium, every context's fake camera is the same capture device; with the expert's and
the client's contexts in one browser, about half of the Parley joins (6 of 11 in one run) saw
that device deliver no frame to either page for some 2.7 s, starting as the two pages' peer
connections were made, so the first remote frame came ~3.1 s after the click instead of
~0.6 s; the bare pages, even asking for the camera as the room page does (1280x720 at 30 fps),
never did. With one browser per side it did not happen in any join. ``--one-browser`` puts
both sides of both kinds in one browser, as the browser tests do, to see it again.

**Parley.** Each join books a fresh room through the services (an approved expert, a client with
a paid seat, the room open now) and opens two fresh browser contexts, the expert's and the
client's (one in each browser), each logged in by a session cookie, on the room page with
camera and microphone on (``#devices-on``, until ``#preview`` plays): that preflight is not
timed. The expert clicks ``#join`` and the bench waits until the expert's page is in the call
(``data-phase=call``); then the client clicks ``#join``. The click's moment is
``performance.now()`` in a capturing listener of the client's page, which runs just before the
page's own handler. The first remote frame is the first ``requestVideoFrameCallback`` of the
``.peer video`` element, at the frame's presentation time, on the page's own clock. The client
row is from the click to the first frame of the expert's video on the client's page; the
expert row is from the same click to the first frame of the client's video on the expert's
page, converted between the two pages through ``performance.timeOrigin`` (both pages' clocks
are the machine's; the bench reads both from outside before each join and reports the largest
difference it saw, which is mostly the reading's own uncertainty of a few milliseconds). The
path this takes: the client's socket (Daphne, admission against PostgreSQL), ``welcome``,
perfect negotiation with trickle ICE relayed through Redis, ICE with the deployment's STUN and
TURN (coturn on 127.0.0.1), DTLS, and the first decoded key frame.

**Baseline.** Two fresh contexts, one in each browser, open a tiny static page served by a
loopback HTTP server of the bench's own, start their fake camera and microphone (not timed),
and connect with the least signaling there is: the offering page makes its offer and waits for
its ICE gathering to complete, the bench hands the SDP to the answering page with
``page.evaluate``, and the answer back the same way (no trickle). ``iceServers`` is empty, so
the only candidates are host candidates on 127.0.0.1: no STUN, no TURN. The time is from just
before ``new RTCPeerConnection`` and ``createOffer`` in the offering page to the first
``requestVideoFrameCallback`` of the offerer's video in the answering page.

One warm-up join of each kind comes first and is not counted (the first requests to a fresh
Daphne process and the first contexts of a fresh browser); then the bare and the Parley joins
alternate, so a change in the machine's load falls on both. ``p50 ratio`` is a row's p50 over
the baseline's. With ``--json`` the ``summary`` holds ``client_p50_ratio`` (the client row's),
``expert_p50_ratio`` and the two p50s they divide.

    .venv/bin/python bench/join.py [--json] [--quick] [--joins N] [--one-browser]

10 joins take about two minutes on a 2-core machine (3 joins, ``--quick``: about one), some
10 s of it starting the deployment. A Parley join slower than 1.5 s has what its peer
connections went through printed on stderr as it happens; every join's is in ``--json``. The
last line says how many CPUs the machine has and how busy it was at the start and at the end:
the browsers, Daphne, Celery, coturn, Redis and PostgreSQL all share it, and other work on the
machine shares it with them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from _table import number, table
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from rooms.tests.browser.support import (
    BASE_URL,
    CHROMIUM,
    CHROMIUM_FLAGS,
    FAKE_UI_FLAG,
    Contexts,
    RoomPage,
    booked_session,
)
from rooms.tests.e2e_services import (
    PG_PORT,
    REDIS_PORT,
    Deployment,
    DeploymentError,
    http_ok,
    loopback_only,
    wait_for,
)

DEFAULT_JOINS = 10
QUICK_JOINS = 3
WARMUP_JOINS = 1
# docs/OPERATIONS.md measured ~0.3 s for a bare call and the browser tests allow the page 3 s: past
# this, something is broken rather than slow.
FIRST_FRAME_TIMEOUT_MS = 20_000
# Two readings of the pages' clocks count only when Python's round trip took at most this.
CLOCK_READ_TRIES = 5
# A join this slow has its peer connections' timelines shown as it happens.
SLOW_JOIN_MS = 1500
SERVICE_START_TIMEOUT_S = 30

DATABASE_URL = f"postgres://postgres@127.0.0.1:{PG_PORT}/parley"
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
TOOLS = ("unshare", "ip", "turnserver", "redis-server", CHROMIUM)

BARE = "bare WebRTC (two pages, no product)"
CLIENT = "Parley: click Join → first remote frame (client)"
EXPERT = "Parley: same click → expert sees client"

STARTED = time.monotonic()


class BenchError(Exception):
    """The bench cannot run; the message says why and what to do."""


class JoinFailed(Exception):
    """One join did not reach its first frame; the message says how far it got."""


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


# --- the pages ------------------------------------------------------------------------------

# Installed in each room page before any click: when #join was clicked (a capturing listener on
# the window runs before the button's own handler), when the page got its `welcome` (the phase
# turns to `call`), when the peer's tile appeared, and the first frame its video presented.
_WATCH_ROOM = """
() => {
  if (window.__bench) return;
  let frameSeen;
  const bench = {
    clickAt: null, welcomeAt: null, tileAt: null, frame: null,
    firstFrame: new Promise((resolve) => { frameSeen = resolve; }),
  };
  window.__bench = bench;
  window.addEventListener('click', (event) => {
    if (bench.clickAt === null && event.target.closest && event.target.closest('#join')) {
      bench.clickAt = performance.now();
    }
  }, {capture: true});
  const watched = new WeakSet();
  const look = () => {
    const room = document.getElementById('room');
    if (bench.welcomeAt === null && room && room.dataset.phase === 'call') {
      bench.welcomeAt = performance.now();
    }
    for (const video of document.querySelectorAll('#peers .peer video')) {
      if (watched.has(video)) continue;
      watched.add(video);
      if (bench.tileAt === null) bench.tileAt = performance.now();
      video.requestVideoFrameCallback((now, metadata) => {
        if (bench.frame !== null) return;
        bench.frame = {
          presentationTime: metadata.presentationTime,
          receiveTime: metadata.receiveTime ?? null,
          width: metadata.width,
          height: metadata.height,
        };
        frameSeen(bench.frame);
      });
    }
  };
  new MutationObserver(look).observe(document.documentElement, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['data-phase'],
  });
  look();
}
"""

# The first frame, or null after `ms`; with what the page knew then, for the error message.
_FIRST_FRAME = """
async (ms) => {
  const bench = window.__bench;
  const frame = await Promise.race(
    [bench.firstFrame, new Promise((resolve) => setTimeout(() => resolve(null), ms))]);
  let decoded = null;
  try {
    decoded = await window.parley.framesDecoded();
  } catch (error) {
    decoded = String(error);
  }
  const video = document.querySelector('#peers .peer video');
  return {
    frame, clickAt: bench.clickAt, welcomeAt: bench.welcomeAt, tileAt: bench.tileAt,
    timeOrigin: performance.timeOrigin,
    phase: document.getElementById('room')?.dataset.phase ?? null,
    video: video ? {paused: video.paused, readyState: video.readyState} : null,
    framesDecoded: decoded,
  };
}
"""

# The candidate pair the page's one link is using: `local/remote` candidate types.
_CANDIDATES = """
async () => {
  const link = [...(window.parley?.links?.values() ?? [])][0];
  if (!link?.pc?.getStats) return null;
  const byId = new Map();
  (await link.pc.getStats()).forEach((stat) => byId.set(stat.id, stat));
  for (const stat of byId.values()) {
    if (stat.type === 'candidate-pair' && stat.nominated && stat.state === 'succeeded') {
      const local = byId.get(stat.localCandidateId)?.candidateType ?? '?';
      const remote = byId.get(stat.remoteCandidateId)?.candidateType ?? '?';
      return `${local}/${remote}`;
    }
  }
  return null;
}
"""

_NOW = "() => performance.timeOrigin + performance.now()"

# Added to the room pages before their scripts run: what each RTCPeerConnection went through,
# on the page's clock, to tell where a slow join spent its time. It only listens.
_RTC_LOG = """
(() => {
  const Native = window.RTCPeerConnection;
  const log = [];
  window.__rtcLog = log;
  let made = 0;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      const id = ++made;
      const note = (what) => log.push([performance.now(), `pc${id} ${what}`]);
      note('created');
      const on = (event, what) => this.addEventListener(event, (e) => note(what(e)));
      on('signalingstatechange', () => this.signalingState);
      on('icegatheringstatechange', () => `gathering ${this.iceGatheringState}`);
      on('iceconnectionstatechange', () => `ice ${this.iceConnectionState}`);
      on('connectionstatechange', () => `connection ${this.connectionState}`);
      on('track', ({track}) => {
        track.addEventListener('unmute', () => note(`${track.kind} unmuted`), {once: true});
        return `track ${track.kind}`;
      });
    }
  };
})();
"""

# The baseline's page: camera and microphone, one RTCPeerConnection with no ICE servers, offer
# and answer non-trickle (each side waits for its gathering to complete), and the first frame
# of the remote video. Muted, so it plays without a click.
BARE_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>bare WebRTC</title></head>
<body>
<video id="self" autoplay playsinline muted></video>
<video id="remote" autoplay playsinline muted></video>
<script>
const gathered = (pc) => new Promise((resolve) => {
  if (pc.iceGatheringState === 'complete') return resolve();
  pc.addEventListener('icegatheringstatechange', () => {
    if (pc.iceGatheringState === 'complete') resolve();
  });
});
window.bare = {
  stream: null,
  pc: null,
  firstFrame: null,
  async media() {
    this.stream = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
    const self = document.getElementById('self');
    self.srcObject = this.stream;
    await self.play();
  },
  connect() {
    const pc = new RTCPeerConnection({iceServers: [], bundlePolicy: 'max-bundle'});
    for (const track of this.stream.getTracks()) pc.addTrack(track, this.stream);
    const remote = document.getElementById('remote');
    this.firstFrame = new Promise((resolve) => {
      remote.requestVideoFrameCallback((now, metadata) => resolve({
        presentationTime: metadata.presentationTime,
        receiveTime: metadata.receiveTime ?? null,
      }));
    });
    pc.ontrack = ({track, streams}) => {
      if (track.kind !== 'video') return;
      remote.srcObject = streams[0];
      remote.play().catch(() => {});
    };
    this.pc = pc;
    return pc;
  },
  async offer() {
    const startedAt = performance.now();
    const pc = this.connect();
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    return {startedAt, sdp: pc.localDescription.sdp};
  },
  async answer(sdp) {
    const pc = this.connect();
    await pc.setRemoteDescription({type: 'offer', sdp});
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    return pc.localDescription.sdp;
  },
  async accept(sdp) {
    await this.pc.setRemoteDescription({type: 'answer', sdp});
  },
  frame(ms) {
    return Promise.race(
      [this.firstFrame, new Promise((resolve) => setTimeout(() => resolve(null), ms))]);
  },
};
</script>
</body></html>
"""


class _BarePageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(BARE_PAGE)))
        self.end_headers()
        self.wfile.write(BARE_PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # stdout and stderr are for the results and the progress


@contextlib.contextmanager
def bare_page_served() -> Iterator[str]:
    """The baseline's page on 127.0.0.1 (a secure context, so getUserMedia is allowed)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BarePageHandler)
    thread = threading.Thread(target=server.serve_forever, name="bare-page", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def clock_ms(page: Page) -> tuple[float, float]:
    """The page's clock (`timeOrigin + now`, epoch ms) minus this process's, and the
    uncertainty of that reading (half of the best of a few round trips)."""
    best: tuple[float, float] | None = None
    for _ in range(CLOCK_READ_TRIES):
        before = time.time() * 1000
        at_page = float(page.evaluate(_NOW))
        after = time.time() * 1000
        reading = (at_page - (before + after) / 2, (after - before) / 2)
        if best is None or reading[1] < best[1]:
            best = reading
    assert best is not None
    return best


def clock_skew_ms(a: Page, b: Page) -> float:
    """How far apart the two pages' `timeOrigin + now` clocks are, as far as one can tell from
    outside; the cross-page times assume this is about zero."""
    (offset_a, _), (offset_b, _) = clock_ms(a), clock_ms(b)
    return abs(offset_a - offset_b)


# --- one join of each kind ------------------------------------------------------------------


# Where each side's context lives: the expert's (and the offerer's) first, the client's (and
# the answerer's) second; the same browser twice with --one-browser.
Browsers = tuple[Browser, Browser]


@dataclass(frozen=True)
class BareJoin:
    ms: float
    clock_skew_ms: float


@dataclass(frozen=True)
class ParleyJoin:
    room_id: int
    client_ms: float  # the client's click to the expert's first frame on the client's page
    expert_ms: float  # the same click to the client's first frame on the expert's page
    client_welcome_ms: float | None  # the same click to the client's `welcome`
    client_tile_ms: float | None  # ... to the expert's tile on the client's page
    client_candidates: str | None  # local/remote candidate types of the client's link
    # What the peer connections of each page went through, ms after the client's click.
    client_timeline: list[str]
    expert_timeline: list[str]
    clock_skew_ms: float


def bare_join(browsers: Browsers, url: str) -> BareJoin:
    contexts = Contexts(browsers[0])
    try:
        offerer = contexts("bare offerer").new_page()
        answerer = contexts("bare answerer", browser=browsers[1]).new_page()
        for page in (offerer, answerer):
            page.goto(url)
            page.evaluate("() => bare.media()")
        skew = clock_skew_ms(offerer, answerer)
        offer: dict[str, Any] = offerer.evaluate("() => bare.offer()")
        answer: str = answerer.evaluate("(sdp) => bare.answer(sdp)", offer["sdp"])
        offerer.evaluate("(sdp) => bare.accept(sdp)", answer)
        frame: dict[str, Any] | None = answerer.evaluate(
            "(ms) => bare.frame(ms)", FIRST_FRAME_TIMEOUT_MS
        )
        if frame is None:
            state = answerer.evaluate(
                "() => [bare.pc.connectionState, bare.pc.iceConnectionState].join('/')"
            )
            raise JoinFailed(
                f"bare: no remote frame within {FIRST_FRAME_TIMEOUT_MS / 1000:.0f} s "
                f"(answering connection {state})"
            )
        started = float(offerer.evaluate("() => performance.timeOrigin")) + offer["startedAt"]
        shown = float(answerer.evaluate("() => performance.timeOrigin"))
        shown += frame["presentationTime"]
        return BareJoin(ms=round(shown - started, 1), clock_skew_ms=round(skew, 2))
    except PlaywrightError as error:
        raise JoinFailed(f"bare: {error}\n{contexts.report()}") from None
    finally:
        contexts.close()


def parley_join(browsers: Browsers) -> ParleyJoin:
    booked = booked_session()
    contexts = Contexts(browsers[0])
    try:
        expert_context = contexts("expert", booked.expert)
        client_context = contexts("client", booked.client, browser=browsers[1])
        for context in (expert_context, client_context):
            context.add_init_script(script=_RTC_LOG)
        expert = RoomPage(expert_context.new_page(), booked, booked.expert, booked.client)
        client = RoomPage(client_context.new_page(), booked, booked.client, booked.expert)
        # The preflight, not timed.
        for side in (expert, client):
            response = side.open()
            if response is None or response.status != 200:
                status = "no response" if response is None else f"HTTP {response.status}"
                raise JoinFailed(f"room {booked.room_id}: the {side.role}'s page: {status}")
            side.devices_on()
            side.page.evaluate(_WATCH_ROOM)
        skew = clock_skew_ms(expert.page, client.page)
        expert.page.locator("#join").click()
        expert.page.wait_for_selector('#room[data-phase="call"]')

        client.page.locator("#join").click()
        seen = {
            side.role: side.page.evaluate(_FIRST_FRAME, FIRST_FRAME_TIMEOUT_MS)
            for side in (client, expert)
        }
        missing = [role for role, what in seen.items() if what["frame"] is None]
        if missing or seen["client"]["clickAt"] is None:
            raise JoinFailed(
                f"room {booked.room_id}: no first frame on the {' and '.join(missing)} page "
                f"within {FIRST_FRAME_TIMEOUT_MS / 1000:.0f} s of the client's click: {seen}\n"
                f"{contexts.report()}"
            )
        mine, theirs = seen["client"], seen["expert"]
        clicked = mine["clickAt"]

        def after_click(at: float | None) -> float | None:
            return None if at is None else round(at - clicked, 1)

        client_ms = mine["frame"]["presentationTime"] - clicked
        expert_ms = (theirs["timeOrigin"] + theirs["frame"]["presentationTime"]) - (
            mine["timeOrigin"] + clicked
        )
        candidates: str | None = client.page.evaluate(_CANDIDATES)

        def timeline(page: Page, origin: float) -> list[str]:
            """The page's peer-connection log, ms after the client's click."""
            log: list[list[Any]] = page.evaluate("() => window.__rtcLog || []")
            start = mine["timeOrigin"] + clicked - origin
            return [f"{at - start:+.0f} {what}" for at, what in log]

        return ParleyJoin(
            room_id=booked.room_id,
            client_ms=round(client_ms, 1),
            expert_ms=round(expert_ms, 1),
            client_welcome_ms=after_click(mine["welcomeAt"]),
            client_tile_ms=after_click(mine["tileAt"]),
            client_candidates=candidates,
            client_timeline=timeline(client.page, mine["timeOrigin"]),
            expert_timeline=timeline(expert.page, theirs["timeOrigin"]),
            clock_skew_ms=round(skew, 2),
        )
    except (AssertionError, PlaywrightError) as error:
        # AssertionError: RoomPage.devices_on found the preview not playing.
        raise JoinFailed(f"room {booked.room_id}: {error}\n{contexts.report()}") from None
    finally:
        contexts.close()


# --- the deployment -------------------------------------------------------------------------


@contextlib.contextmanager
def deployment_started() -> Iterator[Deployment]:
    """The browser tests' deployment (rooms/tests/browser/conftest.py), Django set up in this
    process against it, and the database migrated."""
    with Deployment() as deployment:
        env = deployment.django_env(DATABASE_URL, REDIS_URL)
        os.environ.update(env)
        # Playwright's sync API runs an event loop in this thread, so Django takes it for an
        # async context and refuses the ORM; the bench's own code is plain sequential code.
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
        progress("starting PostgreSQL, Redis and coturn")
        if deployment.postgres() != DATABASE_URL or deployment.redis() != REDIS_URL:
            raise BenchError("the deployment's database or Redis is not where this bench looks")
        deployment.coturn()
        import django

        django.setup()
        from django.core.management import call_command

        progress("migrating")
        # Migrations talk on stdout at times; stdout is for the results.
        with contextlib.redirect_stdout(sys.stderr):
            call_command("migrate", verbosity=0)
        progress("starting Daphne and Celery (worker and beat)")
        port = urlsplit(BASE_URL).port
        assert port is not None
        daphne = deployment.daphne("daphne", port, env)
        celery = deployment.celery(env)
        wait_for(
            "Daphne",
            functools.partial(http_ok, f"{BASE_URL}/healthz"),
            SERVICE_START_TIMEOUT_S,
            daphne.log,
        )
        wait_for(
            "Celery",
            lambda: "ready." in celery.log.read_text(errors="replace"),
            SERVICE_START_TIMEOUT_S,
            celery.log,
        )
        yield deployment


# --- running --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    what: str
    joins: int
    p50_ms: float | None
    p90_ms: float | None
    min_ms: float | None
    max_ms: float | None
    p50_ratio_to_baseline: float | None = None


@dataclass(frozen=True)
class Report:
    bare: list[BareJoin]
    parley: list[ParleyJoin]
    warmup_bare: list[BareJoin]
    warmup_parley: list[ParleyJoin]
    errors: list[str]
    chromium: str
    one_browser: bool


def measure_all(joins: int, one_browser: bool) -> Report:
    bare: list[BareJoin] = []
    parley: list[ParleyJoin] = []
    warmup_bare: list[BareJoin] = []
    warmup_parley: list[ParleyJoin] = []
    errors: list[str] = []
    with bare_page_served() as bare_url, sync_playwright() as driver:
        launched: list[Browser] = []
        try:
            for _ in range(1 if one_browser else 2):
                launched.append(
                    driver.chromium.launch(
                        executable_path=CHROMIUM, args=[*CHROMIUM_FLAGS, FAKE_UI_FLAG]
                    )
                )
            browsers = (launched[0], launched[-1])
            for index in range(-WARMUP_JOINS, joins):
                warmup = index < 0
                label = "warm-up" if warmup else f"join {index + 1}/{joins}"
                try:
                    bare_result = bare_join(browsers, bare_url)
                    (warmup_bare if warmup else bare).append(bare_result)
                    progress(f"{label}: bare {bare_result.ms:.0f} ms")
                except JoinFailed as error:
                    errors.append(f"{label}: {str(error).splitlines()[0]}")
                    progress(f"{label}: bare FAILED: {error}")
                try:
                    joined = parley_join(browsers)
                    (warmup_parley if warmup else parley).append(joined)
                    progress(
                        f"{label}: Parley client {joined.client_ms:.0f} ms, expert "
                        f"{joined.expert_ms:.0f} ms ({joined.client_candidates})"
                    )
                    if joined.client_ms > SLOW_JOIN_MS:
                        progress(f"  client's peer connections: {joined.client_timeline}")
                        progress(f"  expert's peer connections: {joined.expert_timeline}")
                except JoinFailed as error:
                    errors.append(f"{label}: {str(error).splitlines()[0]}")
                    progress(f"{label}: Parley FAILED: {error}")
            return Report(
                bare,
                parley,
                warmup_bare,
                warmup_parley,
                errors,
                browsers[0].version,
                one_browser,
            )
        finally:
            for browser in launched:
                browser.close()


def percentile(values: Sequence[float], cut: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return round(statistics.quantiles(values, n=100, method="inclusive")[cut - 1], 1)


def row(what: str, values: Sequence[float], baseline_p50: float | None) -> Row:
    p50 = percentile(values, 50)
    return Row(
        what=what,
        joins=len(values),
        p50_ms=p50,
        p90_ms=percentile(values, 90),
        min_ms=min(values, default=None),
        max_ms=max(values, default=None),
        p50_ratio_to_baseline=(
            round(p50 / baseline_p50, 2) if p50 is not None and baseline_p50 else None
        ),
    )


def rows_of(report: Report) -> list[Row]:
    baseline = row(BARE, [j.ms for j in report.bare], None)
    return [
        baseline,
        row(CLIENT, [j.client_ms for j in report.parley], baseline.p50_ms),
        row(EXPERT, [j.expert_ms for j in report.parley], baseline.p50_ms),
    ]


# --- output ---------------------------------------------------------------------------------


def format_rows(rows: list[Row]) -> str:
    header = ("what", "joins", "p50 ms", "p90 ms", "min", "max", "p50 ratio vs baseline")
    return table(
        header,
        [
            (
                r.what,
                str(r.joins),
                number(r.p50_ms, ".0f"),
                number(r.p90_ms, ".0f"),
                number(r.min_ms, ".0f"),
                number(r.max_ms, ".0f"),
                "-" if r.p50_ratio_to_baseline is None else f"{r.p50_ratio_to_baseline:.2f}x",
            )
            for r in rows
        ],
        left=1,
    )


def notes_of(report: Report) -> list[str]:
    notes = [
        "bare: iceServers [] (host candidates on 127.0.0.1 only), non-trickle offer/answer "
        "handed between the pages by the bench; timed from just before new RTCPeerConnection "
        "and createOffer in the offering page to the first frame in the answering page",
        "Parley: the deployment's STUN and TURN (coturn on 127.0.0.1), trickle ICE over its "
        "signaling socket (Daphne, Redis); every join a fresh room, fresh people and fresh "
        "browser contexts, camera and microphone on before the click; "
        f"{WARMUP_JOINS} warm-up join of each kind not counted, bare and Parley alternating",
        "both sides in one Chromium, sharing its fake camera (--one-browser)"
        if report.one_browser
        else "each side in a Chromium of its own, with a fake camera of its own",
    ]
    welcomes = [j.client_welcome_ms for j in report.parley if j.client_welcome_ms is not None]
    if welcomes:
        notes.append(
            f"client's click → its welcome (socket admitted): p50 {percentile(welcomes, 50):.0f}"
            f" ms, max {max(welcomes):.0f} ms; the rest of the client row is negotiation, ICE, "
            "DTLS and the first key frame"
        )
    pairs = Counter(j.client_candidates or "unknown" for j in report.parley)
    if pairs:
        shown = ", ".join(f"{pair} x{count}" for pair, count in pairs.most_common())
        notes.append(f"client's candidate pair (local/remote) after the first frame: {shown}")
    skews = [j.clock_skew_ms for j in report.bare] + [j.clock_skew_ms for j in report.parley]
    if skews:
        notes.append(
            f"clocks of two pages apart by at most {max(skews):.1f} ms as read from outside "
            "(the bare and the expert rows compare two pages' clocks)"
        )
    return notes


def tools_check() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise BenchError(f"missing {', '.join(missing)}: run scripts/services.sh as root.")


def namespace_enter() -> BenchError:
    """Re-execute this bench in a network namespace of its own that has only loopback; returns
    only when that cannot be done, with why."""
    if os.geteuid() != 0:
        return BenchError(
            "needs root: every WebRTC packet must stay on 127.0.0.1, so the bench runs in a "
            "network namespace of its own with only loopback (unshare -n). Run it as root, "
            "e.g. `sudo .venv/bin/python bench/join.py`."
        )
    try:
        tools_check()
    except BenchError as error:
        return error
    sys.stdout.flush()
    sys.stderr.flush()
    command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']
    command += [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:]]
    try:
        os.execvp(command[0], command)  # noqa: S606 (fixed command, no shell of ours)
    except OSError as error:
        return BenchError(f"could not run unshare: {error}")


def _stop(signum: int, frame: FrameType | None) -> None:
    # As an exception, so the `with` blocks stop the browser and every service.
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def join_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("needs at least 1 join")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()) if __doc__ else None
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_JOINS} joins")
    parser.add_argument(
        "--joins", type=join_count, help=f"measured joins of each kind (default {DEFAULT_JOINS})"
    )
    parser.add_argument(
        "--one-browser",
        action="store_true",
        help="both sides' contexts in one Chromium, sharing its fake camera, as in the browser "
        "tests (the module's docstring says why that is not the default)",
    )
    args = parser.parse_args()
    joins = args.joins or (QUICK_JOINS if args.quick else DEFAULT_JOINS)

    if not loopback_only():
        problem = namespace_enter()
        print(f"join: {problem}", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, _stop)
    cpus = os.cpu_count() or 1
    load_at_start = round(os.getloadavg()[0], 2)
    started = time.monotonic()
    try:
        tools_check()
        with deployment_started():
            report = measure_all(joins, args.one_browser)
    except (BenchError, DeploymentError) as error:
        print(f"join: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as error:
        print(f"join: {error or 'interrupted'}; the services are stopped", file=sys.stderr)
        return 130
    seconds = round(time.monotonic() - started, 1)
    load_at_end = round(os.getloadavg()[0], 2)

    rows = rows_of(report)
    notes = notes_of(report)
    if args.json:
        client, expert = rows[1], rows[2]
        output = {
            # Issue 18's figure: the client row's p50 over bare WebRTC's (goal <= 1.2).
            "summary": {
                "client_p50_ratio": client.p50_ratio_to_baseline,
                "expert_p50_ratio": expert.p50_ratio_to_baseline,
                "client_p50_ms": client.p50_ms,
                "bare_p50_ms": rows[0].p50_ms,
            },
            "bench": "join",
            "joins": joins,
            "warmup_joins": WARMUP_JOINS,
            "browsers": 1 if report.one_browser else 2,
            "rows": [asdict(r) for r in rows],
            "bare": [asdict(j) for j in report.bare],
            "parley": [asdict(j) for j in report.parley],
            "warmup": {
                "bare": [asdict(j) for j in report.warmup_bare],
                "parley": [asdict(j) for j in report.warmup_parley],
            },
            "first_frame_timeout_ms": FIRST_FRAME_TIMEOUT_MS,
            "chromium": report.chromium,
            "seconds": seconds,
            "cpus": cpus,
            "load_average_at_start": load_at_start,
            "load_average_at_end": load_at_end,
            "notes": notes,
            "errors": report.errors,
        }
        print(json.dumps(output))
    else:
        print(
            f"join to first remote video frame, {joins} joins each, Chromium {report.chromium} "
            "with fake devices, all on 127.0.0.1; p50 ratio = p50 / bare WebRTC p50"
        )
        print(format_rows(rows))
        for note in notes:
            print(f"- {note}")
        print(
            f"run time: {seconds:.0f} s on {cpus} CPUs (load average {load_at_start} at start, "
            f"{load_at_end} at end)"
        )
    for message in report.errors:
        print(f"join: {message}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
