"""The room page in real Chromium: runs the browser suite (rooms/tests/browser/) in its own
pytest inside a loopback-only network namespace, where it starts the whole deployment
(PostgreSQL, Redis, coturn, Daphne, Celery) and two browsers. Every WebRTC packet stays on
127.0.0.1; the services of the machine are neither reachable nor touched.

It passes if and only if the inner run passes; on failure it shows the inner output, which
carries each failed test's pages and service log tails (rooms/tests/browser/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parents[2]
SUITE_TIMEOUT_SECONDS = 8 * 60
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
    if os.geteuid() != 0:
        pytest.fail(
            "The browser tests need root to make a loopback-only network namespace "
            "(unshare -n) and to cut its UDP with nftables; run `make test` as root."
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"Missing {', '.join(missing)}: run scripts/services.sh as root.")

    started = time.monotonic()
    inner = subprocess.Popen(  # noqa: S603 (a fixed command)
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']  # noqa: S607
        + [sys.executable, *INNER_PYTEST],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=PROJECT_DIR,
    )
    namespace = _namespace_of(inner.pid)
    try:
        output, _ = inner.communicate(timeout=SUITE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the inner pytest stop the services it started.
        inner.terminate()
        try:
            output, _ = inner.communicate(timeout=40)
        except subprocess.TimeoutExpired:
            inner.kill()
            output, _ = inner.communicate()
        leftovers = _end_namespace(namespace)
        pytest.fail(
            f"The browser suite ran over {SUITE_TIMEOUT_SECONDS} s{leftovers}:\n"
            f"{_shortened(output)}",
            pytrace=False,
        )
    leftovers = _end_namespace(namespace)
    seconds = time.monotonic() - started
    print(f"\n{output}\nbrowser suite: {seconds:.0f} s")
    if inner.returncode != 0:
        pytest.fail(
            f"The browser suite failed (exit {inner.returncode}, {seconds:.0f} s){leftovers}:\n"
            f"{_shortened(output)}",
            # The inner output is the story; this function's source adds nothing to it.
            pytrace=False,
        )
    assert not leftovers, leftovers


def _namespace_of(pid: int) -> str | None:
    """The network namespace `unshare` made (its process becomes the inner pytest)."""
    deadline = time.monotonic() + 5
    own = os.readlink("/proc/self/ns/net")
    while time.monotonic() < deadline:
        try:
            namespace = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            return None  # already gone
        if namespace != own:
            return namespace
        time.sleep(0.01)
    return None


def _end_namespace(namespace: str | None) -> str:
    """SIGKILL whatever still runs in the suite's namespace (only the suite's own processes
    live there: services a killed run could not stop); says what it ended."""
    if namespace is None:
        return ""
    ended = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "net") != namespace:
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            os.kill(int(entry.name), signal.SIGKILL)
        except OSError:
            continue
        ended.append(f"{entry.name} {command[:80]}")
    if not ended:
        return ""
    return "; processes left in its namespace were killed: " + ", ".join(ended)


def _shortened(output: str) -> str:
    if len(output) <= OUTPUT_LIMIT:
        return output
    half = OUTPUT_LIMIT // 2
    return f"{output[:half]}\n[… {len(output) - OUTPUT_LIMIT} characters …]\n{output[-half:]}"
