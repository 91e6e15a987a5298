"""What the browser tests share: the deployment's address and Chromium's flags, people and a
room seeded through the services, logging in, the room page as docs/CALL_PAGE.md describes it,
the accessibility check every page gets, and the network outage.

Django is set up by conftest.py's `pytest_configure`, after this module is imported, so the
helpers that touch the database import their models when called.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, ParamSpec, TypeVar

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    WebSocketRoute,
)
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from rooms.tests.e2e_services import loopback_only
from rooms.tools.participant import overlap_seconds

if TYPE_CHECKING:
    from billing.models import Settlement

# The one Daphne of the deployment (conftest.py starts it).
BASE_URL = "http://127.0.0.1:8101"
CHROMIUM = "/usr/bin/chromium"
# docs/OPERATIONS.md, WebRTC on one machine: without --allow-loopback-in-peer-connection ICE
# never completes on loopback.
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Answers every camera and microphone prompt with "allow"; the browser of the permission test
# goes without it, so what the context did not grant is refused as a person's "block" would be.
FAKE_UI_FLAG = "--use-fake-ui-for-media-stream"
# Video frames further apart than this are a freeze, not a stream (rooms/tools/participant.py).
FRAME_GAP_SECONDS = 1.0
SAMPLE_MILLISECONDS = 100
# Long enough for a page to load and a button to appear; short enough that a missing element
# fails its test in seconds.
DEFAULT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class Person:
    id: int
    email: str
    password: str


@dataclass(frozen=True)
class Booked:
    """A per-minute 1:1 room, open now, with an approved expert and a client's paid seat."""

    room_id: int
    seat_id: int
    payment_id: int
    expert: Person
    client: Person

    @property
    def url(self) -> str:
        return f"{BASE_URL}/r/{self.room_id}/"


# --- the database ---------------------------------------------------------------------------


def booked_session() -> Booked:
    """Fresh people and a fresh room, booked and paid through the services (the local payment
    provider) the way the end-to-end call test books its own."""
    from rooms.tests.e2e_harness import seed

    people = seed()

    def person(who: str) -> Person:
        data = people[who]
        return Person(data["id"], data["email"], data["password"])

    return Booked(
        room_id=people["room"],
        seat_id=people["seat"],
        payment_id=people["payment"],
        expert=person("expert"),
        client=person("client"),
    )


def stranger() -> Person:
    """A logged-in someone with no part in any room."""
    from accounts.tests.factories import PASSWORD, UserFactory

    user = UserFactory.create(time_zone="UTC")
    return Person(user.pk, user.email, PASSWORD)


def session_cookie(person: Person) -> tuple[str, str]:
    """A Django session of `person`, written to the database as a login would write it;
    returns the cookie's name and value."""
    from django.conf import settings
    from django.test import Client

    from accounts.models import User

    client = Client()
    client.force_login(User.objects.get(pk=person.id))
    return settings.SESSION_COOKIE_NAME, client.cookies[settings.SESSION_COOKIE_NAME].value


def settlement_wait(payment_id: int, timeout: float = 20.0) -> Settlement:
    """The seat's Settlement once the room's close has written it."""
    from billing.models import Settlement

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        settlement = Settlement.objects.filter(payment_id=payment_id).first()
        if settlement is not None:
            return settlement
        time.sleep(0.2)
    raise AssertionError(
        f"No settlement for payment {payment_id} within {timeout:.0f} s: {_room_story(payment_id)}"
    )


def room_settlements_total(room_id: int) -> int:
    """What the expert's page shows: the total of the room's settlements."""
    from django.db.models import Sum

    from billing.models import Settlement
    from rooms.models import Seat

    payments = Seat.objects.filter(room_id=room_id, payment__isnull=False).values("payment_id")
    total = Settlement.objects.filter(payment_id__in=payments).aggregate(total=Sum("amount_minor"))
    return int(total["total"] or 0)


def server_record(booked: Booked, origin: float) -> str:
    """What the server recorded of the call, in seconds after `origin` (a `time.time()`):
    presences, media links by reporter, the live window."""
    from rooms.models import MediaLink, Presence, Room

    role = {booked.expert.id: "expert", booked.client.id: "client"}

    def at(moment: Any) -> str:
        return "open" if moment is None else f"{moment.timestamp() - origin:.1f}"

    room = Room.objects.get(pk=booked.room_id)
    presences = [
        f"{role.get(p.user_id, p.user_id)} {at(p.opened_at)}–{at(p.closed_at)} ({p.close_reason})"
        for p in Presence.objects.filter(room=room).order_by("opened_at")
    ]
    links = [
        f"by {role.get(m.reported_by_id, m.reported_by_id)} {at(m.started_at)}–{at(m.ended_at)}"
        f" {m.candidate_type}"
        for m in MediaLink.objects.filter(room=room).order_by("started_at")
    ]
    return (
        f"live {at(room.live_at)}–{at(room.closed_at)}; presences: {'; '.join(presences)}; "
        f"media links: {'; '.join(links)}"
    )


def _room_story(payment_id: int) -> str:
    from rooms.models import RoomEvent, Seat

    seat = Seat.objects.select_related("room").get(payment_id=payment_id)
    events = RoomEvent.objects.filter(room=seat.room).order_by("pk").values_list("kind", flat=True)
    return f"room {seat.room_id} is {seat.room.state}; its events: {', '.join(events)}"


# --- logging in -----------------------------------------------------------------------------


def log_in_with_form(page: Page, person: Person) -> None:
    """Type the email and password into the login page and submit it, as a person does."""
    page.locator('input[name="login"]').fill(person.email)
    page.locator('input[name="password"]').fill(person.password)
    page.locator('input[name="password"]').press("Enter")


# --- accessibility ------------------------------------------------------------------------

# axe-core from npm, pinned by scripts/axe/package-lock.json and installed by
# scripts/bootstrap.sh (`npm ci --prefix scripts/axe`).
AXE_SCRIPT = Path(__file__).resolve().parents[3] / "scripts/axe/node_modules/axe-core/axe.min.js"
# A violation of these impacts fails the test; "moderate" and "minor" ones do not.
AXE_FAILING_IMPACTS = ("serious", "critical")
# How long the end of a test waits for a page's check that is still running.
AXE_SETTLE_MS = 15_000

# Frames are left out: the only ones a page embeds are the payment provider's, from another
# origin, which axe would wait for in vain.
_AXE_FIND = """async (impacts) => {
  const results = await axe.run(document, {iframes: false, resultTypes: ['violations']});
  return results.violations
    .filter((rule) => impacts.includes(rule.impact))
    .map((rule) => ({
      rule: rule.id, impact: rule.impact, help: rule.help, helpUrl: rule.helpUrl,
      targets: rule.nodes.map((node) => node.target.join(' ')),
    }));
}"""
# Runs in every document of a watched context (after axe-core's source, as one init script):
# once the product's page has loaded, it reports the document as it loaded (its HTML, for a
# replay should the test leave before the check ends), then what axe-core found.
_AXE_IN_PAGE = """
;(() => {
  if (window.top !== window || location.origin !== ORIGIN) return;
  const find = FIND;
  const report = window.__parleyAxe;
  const doc = `${Date.now()}-${Math.random()}`;
  window.__parleyAxeFinished = false;
  const check = async () => {
    const url = location.href;
    try {
      await report({doc, url, phase: 'loaded', html: document.documentElement.outerHTML});
      await report({doc, url, phase: 'checked', violations: await find(IMPACTS)});
    } catch (error) {
      await report({doc, url, phase: 'failed', error: String(error)});
    } finally {
      window.__parleyAxeFinished = true;
    }
  };
  addEventListener('load', () => { check(); }, {once: true});
})();
"""


@dataclass(frozen=True)
class AxeViolation:
    url: str
    who: str  # the label of the browser context whose page it was
    rule: str
    impact: str
    help: str
    help_url: str
    targets: tuple[str, ...]
    replayed: bool = False

    def __str__(self) -> str:
        how = " (checked on its HTML as loaded: the test left it first)" if self.replayed else ""
        return (
            f"{self.url} [{self.who}]{how}: {self.rule} ({self.impact}): {self.help} "
            f"<{self.help_url}>\n      at {'; '.join(self.targets)}"
        )


@functools.cache
def axe_source() -> str:
    if not AXE_SCRIPT.exists():
        raise RuntimeError(
            f"axe-core is not installed at {AXE_SCRIPT}: run scripts/bootstrap.sh "
            "(or `npm ci --prefix scripts/axe`)."
        )
    return AXE_SCRIPT.read_text()


def axe_version() -> str:
    import json

    package = AXE_SCRIPT.parent / "package.json"
    return str(json.loads(package.read_text())["version"])


def _violations(rows: list[dict[str, Any]], url: str, who: str, **extra: Any) -> list[AxeViolation]:
    return [
        AxeViolation(
            url=url,
            who=who,
            rule=row["rule"],
            impact=row["impact"],
            help=row["help"],
            help_url=row["helpUrl"],
            targets=tuple(row["targets"]),
            **extra,
        )
        for row in rows
    ]


def axe_violations(page: Page, who: str = "") -> list[AxeViolation]:
    """Runs axe-core on the page's document as it is now; its serious and critical
    violations. Injected through the DevTools protocol, so the page's CSP does not stop it."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.evaluate(axe_source())
    found = page.evaluate(_AXE_FIND, list(AXE_FAILING_IMPACTS))
    return _violations(found, page.url, who)


_SCRIPT_ELEMENT = re.compile(r"<script\b[^>]*>.*?</script\s*>", re.IGNORECASE | re.DOTALL)
_HEAD_OPEN = re.compile(r"<head\b[^>]*>", re.IGNORECASE)


@dataclass
class AxeDocument:
    """A document of the product a page loaded: its HTML then, and whether it was checked."""

    url: str
    who: str
    html: str
    checked: bool = False


class AxeWatch:
    """Runs axe-core on every document of the product that the pages of watched contexts load:
    in the page, as soon as it has loaded (while it runs, the page's own events wait their
    turn, so a click usually finds it done). A document the test left before its check ended is
    checked afterwards on its HTML as it loaded, scripts removed, styles kept. Violations are
    kept, and fail the test at its end (conftest.py)."""

    def __init__(self) -> None:
        self.violations: list[AxeViolation] = []
        self.checked: list[str] = []  # the URLs checked, in order
        self.problems: list[str] = []  # checks that could not run, and why
        self._documents: dict[str, AxeDocument] = {}
        self._contexts: list[BrowserContext] = []

    def watch(self, context: BrowserContext, who: str) -> None:
        self._contexts.append(context)
        context.expose_binding("__parleyAxe", functools.partial(self._reported, who))
        script = (
            _AXE_IN_PAGE.replace("ORIGIN", repr(BASE_URL))
            .replace("FIND", _AXE_FIND)
            .replace("IMPACTS", repr(list(AXE_FAILING_IMPACTS)))
        )
        context.add_init_script(script=axe_source() + script)

    def _reported(self, who: str, source: Any, report: dict[str, Any]) -> None:
        doc, url = str(report["doc"]), str(report["url"])
        if report["phase"] == "loaded":
            self._documents[doc] = AxeDocument(url, who, str(report["html"]))
        elif report["phase"] == "checked":
            self._documents.setdefault(doc, AxeDocument(url, who, "")).checked = True
            self._found(url, _violations(report["violations"], url, who))
        else:
            self.problems.append(f"{url} [{who}]: axe-core failed: {report.get('error')}")

    def _found(self, url: str, violations: list[AxeViolation]) -> None:
        self.checked.append(url)
        self.violations.extend(v for v in violations if v not in self.violations)

    def settle(self, contexts: list[tuple[str, BrowserContext]], browser: Browser) -> None:
        """At the end of the test: let the open pages' checks end, then check the documents
        left too early on their HTML as loaded. Pages of contexts that were not watched are
        checked as they are now."""
        watched = {id(context) for context in self._contexts}
        for who, context in contexts:
            for page in context.pages:
                if page.is_closed() or not page.url.startswith(f"{BASE_URL}/"):
                    continue
                try:
                    if id(context) in watched:
                        page.wait_for_function(
                            "() => window.__parleyAxeFinished !== false", timeout=AXE_SETTLE_MS
                        )
                    else:
                        self._found(page.url, axe_violations(page, who))
                except PlaywrightError as error:
                    self.problems.append(f"{page.url} [{who}]: {str(error).splitlines()[0]}")
        for document in self._documents.values():
            if not document.checked and document.html:
                self.replay(browser, document)
                document.checked = True

    def replay(self, browser: Browser, document: AxeDocument) -> None:
        html = _SCRIPT_ELEMENT.sub("", document.html)
        html = _HEAD_OPEN.sub(lambda head: f'{head.group(0)}<base href="{document.url}">', html, 1)
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_content(html)
            found = axe_violations(page, document.who)
        finally:
            context.close()
        self._found(
            document.url,
            [dataclasses.replace(v, url=document.url, replayed=True) for v in found],
        )

    def failure(self) -> str | None:
        """What fails the test: every serious or critical violation found, or None."""
        if not self.violations:
            return None
        lines = [
            f"axe-core {axe_version()} found {len(self.violations)} serious or critical "
            "accessibility violation(s):"
        ]
        lines.extend(f"  {violation}" for violation in self.violations)
        return "\n".join(lines)


# --- browser contexts ---------------------------------------------------------------------


class Contexts:
    """Opens browser contexts (one per person), logged in by a session cookie or not at all;
    runs axe-core on every document their pages show (AxeWatch); keeps what their pages said
    in the console for the failure report; closes them."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.opened: list[tuple[str, BrowserContext]] = []
        self.console: list[str] = []
        self.axe = AxeWatch()

    def __call__(
        self,
        label: str,
        person: Person | None = None,
        *,
        browser: Browser | None = None,
        permissions: tuple[str, ...] = ("camera", "microphone"),
    ) -> BrowserContext:
        context = (browser or self.browser).new_context(
            base_url=BASE_URL, permissions=list(permissions)
        )
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        self.opened.append((label, context))
        if person is not None:
            name, value = session_cookie(person)
            context.add_cookies([{"name": name, "value": value, "url": BASE_URL}])
        context.on("page", functools.partial(self._watch, label))
        self.axe.watch(context, label)
        return context

    def _watch(self, label: str, page: Page) -> None:
        def said(message: ConsoleMessage) -> None:
            self.console.append(f"[{label}] console.{message.type}: {message.text}")

        def failed(error: PlaywrightError) -> None:
            self.console.append(f"[{label}] page error: {error}")

        def answered(response: Response) -> None:
            if response.status >= 400:
                self.console.append(f"[{label}] HTTP {response.status}: {response.url}")

        page.on("console", said)
        page.on("pageerror", failed)
        page.on("response", answered)

    def report(self) -> str:
        lines = []
        for label, context in self.opened:
            for page in context.pages:
                try:
                    snapshot = page.evaluate(_SNAPSHOT)
                except PlaywrightError as error:
                    snapshot = f"(unreadable: {error})"
                lines.append(f"[{label}] {page.url}\n    {snapshot}")
        lines.append("console (last 60):")
        lines.extend(self.console[-60:])
        lines.append(f"axe-core checked {len(self.axe.checked)} page(s)")
        lines.extend(f"  {violation}" for violation in self.axe.violations)
        lines.extend(f"  not checked: {problem}" for problem in self.axe.problems)
        return "\n".join(lines)

    def close(self) -> None:
        for _, context in self.opened:
            try:
                context.close()
            except PlaywrightError:
                pass


_SNAPSHOT = """() => {
  const room = document.getElementById('room');
  const attributes = room ? [...room.attributes].map((a) => [a.name, a.value]) : null;
  return JSON.stringify({
    title: document.title,
    room: attributes && Object.fromEntries(attributes),
    status: document.getElementById('room-status')?.textContent?.trim() ?? null,
    banner: document.getElementById('banner')?.textContent?.trim() ?? null,
    peers: [...document.querySelectorAll('#peers .peer')].map((t) => ({...t.dataset})),
  });
}"""


P = ParamSpec("P")
R = TypeVar("R")


def off_the_page_loop(function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a service in a thread of its own and return what it returns. The services send
    their broadcasts with async_to_sync, which refuses the thread where Playwright's event
    loop runs (the broadcast would be logged as failed and never reach the pages)."""

    def call() -> R:
        from django.db import connection

        try:
            return function(*args, **kwargs)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=1) as worker:
        return worker.submit(call).result()


# --- the room page --------------------------------------------------------------------------


class Sample(NamedTuple):
    """What a page showed at one moment (wall-clock seconds, like `time.time()`)."""

    at: float
    frames: int | None  # framesDecoded of the peer's inbound video; None: no such peer yet
    phase: str | None  # #room[data-phase]
    peer_status: str | None  # the peer's .peer[data-status]


# Samples the page every SAMPLE_MILLISECONDS from inside it, so the record has no gaps while the
# test is busy elsewhere (clicking on the other page, dropping the network). A reload loses it:
# its survival proves the page was never reloaded.
_RECORDER = """
([peerId, every]) => {
  if (window.__parleyTest) return;
  const record = {samples: [], statuses: [], error: null};
  window.__parleyTest = record;
  // Every status the peer's tile takes, however briefly: sampling could miss a blink.
  const statusSeen = () => {
    const tile = document.querySelector(`#peers .peer[data-peer-id="${peerId}"]`);
    const status = tile ? tile.dataset.status ?? null : null;
    const last = record.statuses[record.statuses.length - 1];
    if (status !== null && (!last || last[1] !== status)) {
      record.statuses.push([Date.now() / 1000, status]);
    }
  };
  new MutationObserver(statusSeen).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'],
  });
  const within = (promise, ms) => Promise.race(
    [promise, new Promise((_, reject) => setTimeout(() => reject(new Error('no answer')), ms))]);
  const sample = async () => {
    let frames = null;
    try {
      if (!window.parley || typeof window.parley.framesDecoded !== 'function') {
        throw new Error('window.parley.framesDecoded() is missing');
      }
      const all = await within(window.parley.framesDecoded(), 1000);
      const value = all ? all[peerId] : undefined;
      frames = typeof value === 'number' ? value : null;
      record.error = null;
    } catch (error) {
      record.error = String(error);
    }
    const room = document.getElementById('room');
    const tile = document.querySelector(`#peers .peer[data-peer-id="${peerId}"]`);
    record.samples.push([Date.now() / 1000, frames,
      room ? room.dataset.phase ?? null : null, tile ? tile.dataset.status ?? null : null]);
  };
  (async () => {
    for (;;) {
      await sample();
      await new Promise((resolve) => setTimeout(resolve, every));
    }
  })();
}
"""


class RoomPage:
    """One person's tab on the room page, driven through the ids of docs/CALL_PAGE.md."""

    def __init__(self, page: Page, booked: Booked, me: Person, peer: Person) -> None:
        self.page, self.booked, self.me, self.peer = page, booked, me, peer
        self.navigations = 0
        page.on("framenavigated", self._navigated)

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    def open(self) -> Response | None:
        return self.page.goto(self.booked.url)

    def devices_on(self) -> None:
        """Ask for the camera and microphone; wait until the preview plays."""
        self.page.locator("#devices-on").click()
        try:
            self.page.wait_for_function(
                """() => {
                  const video = document.getElementById('preview');
                  return video && !video.paused && video.readyState >= 2 && video.videoWidth > 0;
                }""",
                timeout=10_000,
            )
        except PlaywrightTimeoutError:
            raise AssertionError(
                f"#preview did not play within 10 s of clicking #devices-on: {self.describe()}"
            ) from None

    def record(self) -> None:
        self.page.evaluate(_RECORDER, [str(self.peer.id), SAMPLE_MILLISECONDS])

    def join(self) -> float:
        """Click #join; returns when it was clicked."""
        clicked = time.time()
        self.page.locator("#join").click()
        return clicked

    def samples(self) -> list[Sample]:
        raw = self.page.evaluate("() => window.__parleyTest ? window.__parleyTest.samples : null")
        if raw is None:
            raise AssertionError(f"The {self.role} page lost its recorder: it was reloaded.")
        return [Sample(*row) for row in raw]

    def statuses(self) -> list[tuple[float, str]]:
        """Every status the peer's tile took since `record`, with when (wall-clock seconds)."""
        raw = self.page.evaluate("() => window.__parleyTest ? window.__parleyTest.statuses : null")
        if raw is None:
            raise AssertionError(f"The {self.role} page lost its recorder: it was reloaded.")
        return [(at, status) for at, status in raw]

    def recorder_error(self) -> str | None:
        error: str | None = self.page.evaluate(
            "() => window.__parleyTest ? window.__parleyTest.error : 'no recorder'"
        )
        return error

    def frames(self) -> int:
        """The latest framesDecoded of the peer's video (0 before any)."""
        samples = self.samples()
        return next((s.frames for s in reversed(samples) if s.frames is not None), 0)

    @property
    def role(self) -> str:
        return "expert" if self.me == self.booked.expert else "client"

    def describe(self) -> str:
        """The page's phase and the peer tile, for assertion messages."""
        state: dict[str, Any] = self.page.evaluate(
            """() => {
              const room = document.getElementById('room');
              const tiles = [...document.querySelectorAll('#peers .peer')];
              return {
                phase: room ? room.dataset.phase : '(no #room)',
                roomState: room ? room.dataset.roomState : null,
                status: document.getElementById('room-status')?.textContent?.trim(),
                peers: tiles.map((t) => `${t.dataset.peerId}:${t.dataset.status}`),
              };
            }"""
        )
        return f"{self.role} page {state} (recorder: {self.recorder_error() or 'ok'})"


def room_pages(
    contexts: Contexts, booked: Booked, second_browser: Browser
) -> tuple[RoomPage, RoomPage]:
    """The expert's and the client's pages of the booked room, each person on a computer of
    their own (conftest.py: second_browser)."""
    expert = RoomPage(
        contexts("expert", booked.expert).new_page(), booked, booked.expert, booked.client
    )
    client = RoomPage(
        contexts("client", booked.client, browser=second_browser).new_page(),
        booked, booked.client, booked.expert,
    )  # fmt: skip
    return expert, client


def first_frames_at(samples: list[Sample]) -> float | None:
    return next((s.at for s in samples if s.frames), None)


def receiving_intervals(samples: list[Sample], until: float = math.inf) -> list[list[float]]:
    """The intervals in which the peer's video frames kept arriving: between two samples whose
    frame counts differ, merged across freezes shorter than FRAME_GAP_SECONDS."""
    intervals: list[list[float]] = []
    for before, after in zip(samples, samples[1:], strict=False):
        if after.at > until:
            break
        if not after.frames or after.frames == before.frames:
            continue
        if intervals and before.at - intervals[-1][1] <= FRAME_GAP_SECONDS:
            intervals[-1][1] = after.at
        else:
            intervals.append([before.at, after.at])
    return intervals


def changes(samples: list[Sample], origin: float) -> str:
    """When the page's phase, the peer's tile status and the first frame changed, in seconds
    after `origin`: where the time to first frame went."""
    seen: list[str] = []
    last: tuple[str | None, str | None, bool] | None = None
    for sample in samples:
        now = (sample.phase, sample.peer_status, bool(sample.frames))
        if now != last:
            frames = "video" if now[2] else "no video"
            seen.append(f"{sample.at - origin:+.1f} {now[0]}/{now[1]}/{frames}")
            last = now
    return ", ".join(seen[-12:])


def relative(intervals: list[list[float]], origin: float) -> str:
    return ", ".join(f"{start - origin:.1f}–{end - origin:.1f}" for start, end in intervals)


def both_receiving_seconds(a: RoomPage, b: RoomPage, until: float) -> float:
    """The time both pages were receiving the other's video, up to `until`."""
    return overlap_seconds(
        receiving_intervals(a.samples(), until), receiving_intervals(b.samples(), until)
    )


def wait_until(page: Page, ready: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    """Poll `ready()`; waits through Playwright, so the browser's events keep flowing."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if time.monotonic() >= deadline:
            return False
        page.wait_for_timeout(every * 1000)


# --- the outage -----------------------------------------------------------------------------

_OUTAGE_TABLE = "parley_outage"
NFT = shutil.which("nft") or "/usr/sbin/nft"


class SocketCut:
    """A page's room sockets, each passed through Playwright (route_web_socket) so that the one
    open can be cut: from `cut` on it carries nothing either way and never closes, as a network
    that dies silently leaves a socket; the page finds out only when a heartbeat goes
    unanswered, and the sockets it opens after that pass as before. Installed before the page
    opens its first socket."""

    def __init__(self, page: Page) -> None:
        self.routes: list[WebSocketRoute] = []
        self.cut_route: WebSocketRoute | None = None
        self.swallowed: list[dict[str, Any]] = []
        # Set on a heartbeat_ack's way to the page: cut the socket when it arrives.
        self.cut_after_ack = False
        page.route_web_socket(re.compile(r"/ws/rooms/"), self._route)

    def _route(self, page_side: WebSocketRoute) -> None:
        server = page_side.connect_to_server()
        self.routes.append(page_side)

        def from_page(message: str | bytes) -> None:
            if self.cut_route is page_side:
                self.swallowed.append(json.loads(message))
            else:
                server.send(message)

        def from_server(message: str | bytes) -> None:
            if self.cut_route is page_side:
                return
            page_side.send(message)
            if self.cut_after_ack and '"heartbeat_ack"' in str(message):
                # A heartbeat was just answered: the page sends its next one in 5 s and gives
                # the socket up 2.5 s later, the most time a cut socket can hold anything.
                self.cut_after_ack = False
                self.cut_route = page_side

        page_side.on_message(from_page)
        server.on_message(from_server)

    def cut_at_next_ack(self) -> None:
        self.cut_after_ack = True

    def is_cut(self) -> bool:
        return self.cut_route is not None

    def swallowed_types(self) -> list[str]:
        return [str(message.get("type")) for message in self.swallowed]


@contextmanager
def udp_dropped() -> Iterator[None]:
    """No UDP leaves anything in the namespace: the call's media (peer to peer and through
    coturn) stops, while the WebSockets (TCP) go on. Playwright's offline mode only holds a
    page's WebSocket frames and does not touch WebRTC, so an outage needs both."""
    if not loopback_only():
        raise RuntimeError("Refusing to touch nftables outside a loopback-only namespace.")
    _nft("add", "table", "inet", _OUTAGE_TABLE)
    try:
        _nft(
            "add", "chain", "inet", _OUTAGE_TABLE, "out",
            "{ type filter hook output priority 0; }",
        )  # fmt: skip
        _nft("add", "rule", "inet", _OUTAGE_TABLE, "out", "meta", "l4proto", "udp", "drop")
        yield
    finally:
        _nft("delete", "table", "inet", _OUTAGE_TABLE)


def _nft(*arguments: str) -> None:
    done = subprocess.run(  # noqa: S603 (fixed arguments)
        [NFT, *arguments], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"nft {' '.join(arguments)} failed: {done.stderr.strip()}")
