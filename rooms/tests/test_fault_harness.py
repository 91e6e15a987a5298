"""A small run of the fault harness (`rooms/tests/fault_harness.py`; `bench/faults.py` runs
1,000 calls): 40 calls on the production layout — 3 Daphnes behind HAProxy, 2 Celery workers
and beat, a sharded channel layer, PostgreSQL, coturn, localstripe behind a failing proxy —
inside a loopback-only namespace, 3 of the calls with real audio and video between aiortc
participants, while every kind of fault is injected at least once. Nothing
may be lost: no double capture, a settlement and the matching provider state for every seat,
no hold left, every room closed within 30 s of its end, every bill within 2 s of what the
participants' scripts say happened, and no unhandled exception in any process's log."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from rooms.tests.e2e_services import namespace_run, namespace_unready
from rooms.tests.fault_harness import FAULT_KINDS

CALLS = 40
MEDIA_CALLS = 3
TIMEOUT_SECONDS = 420
MAX_BILLING_ERROR_SECONDS = 2.0
TOOLS = ("unshare", "ip", "turnserver", "redis-server", "haproxy")


def _harness_run() -> dict[str, Any]:
    unready = namespace_unready(TOOLS, "The fault harness")
    if unready:
        pytest.fail(unready)
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        out = Path(work) / "faults.json"
        # 40 calls of 60–75 s starting over 10 s, 3 of them with real media; a fault of the
        # infrastructure every 5 s, each of its seven kinds at least once.
        run = namespace_run(
            [sys.executable, "-m", "rooms.tests.fault_harness", "--calls", str(CALLS)]
            + ["--media", str(MEDIA_CALLS), "--length", "60-75", "--spread", "10"]
            + ["--faults-every", "5", "--json", str(out)],
            timeout=TIMEOUT_SECONDS,
            stop_grace=60,
            merge_stderr=True,
        )
        if run.timed_out or run.returncode != 0 or not out.exists():
            pytest.fail(
                f"The harness failed (exit {run.returncode}, {run.seconds:.0f} s)"
                f"{run.leftovers}:\n{run.stdout[-8000:]}"
            )
        result: dict[str, Any] = json.loads(out.read_text())
    print(run.stdout[-3000:])  # noqa: T201 (shown when the test fails)
    return result


def test_forty_calls_through_every_kind_of_fault_lose_nothing() -> None:
    result = _harness_run()
    summary, details = result["summary"], result["details"]
    shown = json.dumps(
        {k: details[k] for k in ("by_kind", "worst_billing", "error_kinds", "harness_log")},
        indent=1,
    )[:12000]
    assert summary["calls"] == CALLS
    assert details["real_media"]["calls"] == MEDIA_CALLS
    assert details["real_media"]["without_video"] == [], details["real_media"]
    webhooks = details["webhooks"]
    assert webhooks["events"] > 0, webhooks
    kept = {k: webhooks[k] for k in ("undelivered", "lost_after_2xx", "unprocessed")}
    assert kept == {"undelivered": [], "lost_after_2xx": [], "unprocessed": []}, webhooks
    assert webhooks["failed_attempts"] == [], webhooks
    missing = [kind for kind in FAULT_KINDS if summary["faults_injected"][kind] < 1]
    assert not missing, f"not injected: {missing}\n{shown}"
    assert details["harness_errors"] == 0, shown
    assert (
        summary["double_captures"],
        summary["lost_settlements"],
        summary["holds_left_at_provider"],
        summary["stuck_rooms"],
    ) == (0, 0, 0, 0), f"{summary}\n{details['stuck']} {details['lost']} {details['held']}\n{shown}"
    assert summary["crashes"] == 0, details.get("crash_excerpts", "")[:8000]
    assert summary["max_billing_error_s"] <= MAX_BILLING_ERROR_SECONDS, shown
