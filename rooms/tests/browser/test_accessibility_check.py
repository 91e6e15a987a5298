"""The accessibility check every browser test gets (support.AxeWatch, conftest.py) finds a
serious violation when there is one: on a page a test loads, and on a page's HTML replayed
after the test left it before the check ended. A check that cannot fail would pass anything."""

from __future__ import annotations

from playwright.sync_api import Browser, Route

from rooms.tests.browser.support import BASE_URL, AxeDocument, Contexts
from rooms.tests.e2e_services import Deployment

# An image without a text alternative and a text box without a label: both "critical".
BROKEN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><title>Broken on purpose</title></head>
<body><main><h1>Broken on purpose</h1>
<img src="/static/missing.png">
<input type="text" name="nameless">
</main></body></html>"""
BROKEN_URL = f"{BASE_URL}/accessibility-check/broken/"


def _serve_broken_page(route: Route) -> None:
    route.fulfill(status=200, content_type="text/html; charset=utf-8", body=BROKEN_PAGE)


def test_a_page_with_an_unlabelled_input_and_an_image_without_alt_fails_the_check(
    contexts: Contexts, browser: Browser, deployment: Deployment
) -> None:
    context = contexts("visitor")
    page = context.new_page()
    page.route(BROKEN_URL, _serve_broken_page)
    page.goto(BROKEN_URL)

    contexts.axe.settle(contexts.opened, browser)
    failure = contexts.axe.failure()

    # What the suite's hook (conftest.py) would fail this test with, were it left standing.
    contexts.axe.violations.clear()
    assert failure is not None, f"axe-core found nothing on {BROKEN_URL}: {contexts.axe.checked}"
    assert "serious or critical accessibility violation" in failure
    assert f"{BROKEN_URL} [visitor]: image-alt (critical)" in failure
    assert f"{BROKEN_URL} [visitor]: label (critical)" in failure
    assert "Images must have alternative text" in failure
    assert "at img" in failure
    assert "Form elements must have labels" in failure
    assert "at input" in failure


def test_a_page_left_before_its_check_ended_is_checked_on_its_html(
    contexts: Contexts, browser: Browser, deployment: Deployment
) -> None:
    contexts.axe.replay(browser, AxeDocument(BROKEN_URL, "visitor", BROKEN_PAGE))
    failure = contexts.axe.failure()

    contexts.axe.violations.clear()
    assert failure is not None
    assert f"{BROKEN_URL} [visitor] (checked on its HTML as loaded" in failure
    assert "image-alt (critical)" in failure


def test_a_clean_page_passes_the_check(contexts: Contexts, deployment: Deployment) -> None:
    page = contexts("visitor").new_page()
    page.goto("/accounts/login/")
    page.wait_for_function("() => window.__parleyAxeFinished === true")

    assert f"{BASE_URL}/accounts/login/" in contexts.axe.checked
    assert contexts.axe.failure() is None, contexts.axe.failure()
