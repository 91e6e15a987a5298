"""The deployment and the browsers of the browser tests.

Outside a loopback-only network namespace this folder is not collected: the outer run (`make
test`) collects only rooms/tests/test_browser.py, which runs this folder again under `unshare -n`
with its own pytest, without pytest-django and above-folder conftests (test_browser.py has the
command). Inside, this file sets Django up against the deployment it starts: PostgreSQL, Redis,
coturn, one Daphne on 127.0.0.1:8101 and a Celery worker with beat, all on loopback.

Every page a test shows is checked with axe-core (support.AxeWatch); a serious or critical
violation fails the test at its end, with the rule, its help, the elements and the page.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
from collections.abc import Generator, Iterator
from types import FrameType

import pytest
from playwright.sync_api import Browser, Playwright, expect, sync_playwright

from rooms.tests.browser.support import (
    AXE_SCRIPT,
    BASE_URL,
    CHROMIUM,
    CHROMIUM_FLAGS,
    DEFAULT_TIMEOUT_MS,
    FAKE_UI_FLAG,
    AxeWatch,
    Contexts,
)
from rooms.tests.e2e_services import (
    PG_PORT,
    REDIS_PORT,
    Deployment,
    http_ok,
    loopback_only,
    wait_for,
)

INSIDE = loopback_only()
# Relative to this folder: everything in it.
collect_ignore_glob = [] if INSIDE else ["*"]

DATABASE_URL = f"postgres://postgres@127.0.0.1:{PG_PORT}/parley"
REDIS_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"

_deployment: Deployment | None = None
# The environment of the deployment's Django processes (Daphne, Celery).
_service_env: dict[str, str] = {}
# Every Chromium the session launched, so the end of a test finds all open pages.
_browsers: list[Browser] = []


def _stop(signum: int, frame: FrameType | None) -> None:
    # KeyboardInterrupt is how pytest stops cleanly: the session's finalizers and
    # pytest_unconfigure run, and they stop the services.
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    global _deployment, _service_env
    if not INSIDE:
        return
    if not AXE_SCRIPT.exists():
        raise pytest.UsageError(
            f"axe-core is not installed at {AXE_SCRIPT}: run scripts/bootstrap.sh "
            "(or `npm ci --prefix scripts/axe`)."
        )
    # test_browser.py sends SIGTERM when the suite runs over its time.
    signal.signal(signal.SIGTERM, _stop)
    _deployment = Deployment(keep=bool(os.environ.get("E2E_KEEP")))
    _service_env = _deployment.django_env(DATABASE_URL, REDIS_URL)
    os.environ.update(_service_env)
    # Playwright's sync API runs its event loop in this thread, so Django sees "an async
    # context" and refuses the ORM; the tests' own code is plain sequential sync code, the
    # case this switch is for. Only this process: Daphne keeps the check.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    import django

    django.setup()
    # Assertions on the page wait as long as its actions do.
    expect.set_options(timeout=DEFAULT_TIMEOUT_MS)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _deployment is not None:
        _deployment.close()


@pytest.fixture(scope="session")
def deployment() -> Iterator[Deployment]:
    """Every service, started once for the session; the database migrated."""
    assert _deployment is not None, "conftest.py's pytest_configure did not run in a namespace"
    env = _service_env
    try:
        assert _deployment.postgres() == DATABASE_URL
        assert _deployment.redis() == REDIS_URL
        _deployment.coturn()
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        daphne = _deployment.daphne("daphne", 8101, env)
        celery = _deployment.celery(env)
        wait_for("Daphne", functools.partial(http_ok, f"{BASE_URL}/healthz"), 30, daphne.log)
        wait_for(
            "Celery", lambda: "ready." in celery.log.read_text(errors="replace"), 30, celery.log
        )
        yield _deployment
    finally:
        _deployment.close()


@pytest.fixture(scope="session")
def playwright(deployment: Deployment) -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


def _chromium(playwright: Playwright, *, prompts_allowed: bool = True) -> Browser:
    flags = [*CHROMIUM_FLAGS, FAKE_UI_FLAG] if prompts_allowed else CHROMIUM_FLAGS
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=flags)
    _browsers.append(browser)
    return browser


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Chromium whose camera and microphone prompts are answered "allow"."""
    browser = _chromium(playwright)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def second_browser(playwright: Playwright) -> Iterator[Browser]:
    """The other side of a call, in a Chromium of its own: contexts of one Chromium share its
    fake camera, which then stalls for ~2.7 s when two pages start calls at once (measured by
    bench/join.py) — a quirk of the test device, not of a call between two people."""
    browser = _chromium(playwright)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def browser_without_fake_ui(playwright: Playwright) -> Iterator[Browser]:
    """Chromium with fake devices, whose permissions are only what a context grants: the rest
    is refused (getUserMedia rejects with NotAllowedError at once, measured in headless mode)."""
    browser = _chromium(playwright, prompts_allowed=False)
    yield browser
    browser.close()


@pytest.fixture
def contexts(browser: Browser, deployment: Deployment) -> Iterator[Contexts]:
    opened = Contexts(browser)
    yield opened
    opened.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test that passed fails if axe-core found a serious or critical violation on any page
    it showed (support.AxeWatch). Pages of contexts opened without the `contexts` fixture are
    checked here as they are at the end."""
    outcome = yield  # a test that failed on its own keeps its failure; the report lists both
    opened = getattr(item, "funcargs", {}).get("contexts")
    watch = opened.axe if isinstance(opened, Contexts) else AxeWatch()
    labelled = opened.opened if isinstance(opened, Contexts) else []
    known = {id(context) for _, context in labelled}
    unlabelled = [
        ("unlabelled", context)
        for browser in _browsers
        if browser.is_connected()
        for context in browser.contexts
        if id(context) not in known
    ]
    if _browsers:
        watch.settle([*labelled, *unlabelled], _browsers[0])
    failure = watch.failure()
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    return outcome


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries what its pages showed and the services' log tails."""
    report = yield
    if report.failed and _deployment is not None and call.when != "teardown":
        opened = getattr(item, "funcargs", {}).get("contexts")
        if isinstance(opened, Contexts):
            report.sections.append(("pages", opened.report()))
        report.sections.append(("services", _deployment.logs()))
    return report


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def _broadcasts_from_the_tests_reach_the_pages() -> Iterator[None]:
    """A service a test calls itself (off_the_page_loop) sends its broadcasts like any other;
    one that failed to (in Playwright's thread, async_to_sync refuses to) would leave the pages
    without the news the test then looks for, and pass or fail for the wrong reason. A
    broadcast goes after its commit (robust): Django logs one that raised. Watched on the
    loggers themselves: the project's logging does not hand Django's records to the root."""
    failures = _Failures()
    loggers = [logging.getLogger(name) for name in ("rooms.broadcast", "django.db.backends.base")]
    for logger in loggers:
        logger.addHandler(failures)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(failures)
    assert not failures.messages, f"broadcasts from the test process failed: {failures.messages}"
