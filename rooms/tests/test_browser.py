"""The room page in real Chromium: runs the browser suite (rooms/tests/browser/) in its own
pytest inside a loopback-only network namespace, where it starts the whole deployment
(PostgreSQL, Redis, coturn, Daphne, Celery) and two browsers. Every WebRTC packet stays on
127.0.0.1; the services of the machine are neither reachable nor touched.

It passes if and only if the inner run passes; on failure it shows the inner output, which
carries each failed test's pages and service log tails (rooms/tests/browser/conftest.py).
"""

from __future__ import annotations

import sys

import pytest

from rooms.tests.e2e_services import namespace_run, namespace_unready

SUITE_TIMEOUT_SECONDS = 20 * 60
TOOLS = ("unshare", "ip", "nft", "turnserver", "redis-server", "chromium")
# The inner run has no pytest-django (it sets Django up against its own deployment) and no
# conftest above its folder (the root one needs pytest-django's database); pyproject's
# pytest-django option is therefore unknown there, which is not worth a warning.
INNER_PYTEST = [
    "-m", "pytest", "rooms/tests/browser",
    "-p", "no:django", "-p", "no:cacheprovider",
    "--confcutdir=rooms/tests/browser",
    "-W", "ignore::pytest.PytestConfigWarning",
    "-q", "-rA", "--tb=short", "--durations=0", "--durations-min=1",
]  # fmt: skip
OUTPUT_LIMIT = 60_000


def test_the_room_page_works_in_chromium_inside_a_loopback_only_namespace() -> None:
    unready = namespace_unready(TOOLS, "The browser suite (and its nftables outage)")
    if unready:
        pytest.fail(unready)
    run = namespace_run(
        [sys.executable, *INNER_PYTEST],
        timeout=SUITE_TIMEOUT_SECONDS,
        stop_grace=40,  # SIGTERM lets the inner pytest stop the services it started
        merge_stderr=True,
    )
    if run.timed_out:
        pytest.fail(
            f"The browser suite ran over {SUITE_TIMEOUT_SECONDS} s{run.leftovers}:\n"
            f"{_shortened(run.stdout)}",
            pytrace=False,
        )
    print(f"\n{run.stdout}\nbrowser suite: {run.seconds:.0f} s")
    if run.returncode != 0:
        pytest.fail(
            f"The browser suite failed (exit {run.returncode}, {run.seconds:.0f} s)"
            f"{run.leftovers}:\n{_shortened(run.stdout)}",
            # The inner output is the story; this function's source adds nothing to it.
            pytrace=False,
        )
    assert not run.leftovers, run.leftovers


def _shortened(output: str) -> str:
    if len(output) <= OUTPUT_LIMIT:
        return output
    half = OUTPUT_LIMIT // 2
    return f"{output[:half]}\n[… {len(output) - OUTPUT_LIMIT} characters …]\n{output[-half:]}"
