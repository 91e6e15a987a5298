"""The call end to end, on a real deployment: two Daphne processes on the Redis channel layer,
a Celery worker with beat, coturn, PostgreSQL and Redis, all inside a loopback-only network
namespace, and two aiortc participants that log in through the login form.

The expert is on Daphne 1 and the client on Daphne 2; media flows both ways; Daphne 2 is
killed and the client's socket comes back on Daphne 1 within the grace while the media goes
on; the expert ends the call. The bill must match what both sides actually saw.

The scenario runs in `rooms/tests/e2e_harness.py` under `unshare -n` (root is needed for the
namespace); it prints its measurements as JSON and this test judges them.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from rooms.tests.e2e_services import namespace_run, namespace_unready

HARNESS_TIMEOUT_SECONDS = 150
# The settlement is in whole seconds and the truth is measured from frame arrival times.
BILLING_TOLERANCE_SECONDS = 2.0
TOOLS = ("unshare", "ip", "turnserver", "redis-server")


def _harness_run() -> dict[str, Any]:
    unready = namespace_unready(TOOLS, "The end-to-end call")
    if unready:
        pytest.fail(unready)
    # SIGTERM on the timeout lets the harness stop the services it started.
    run = namespace_run(
        [sys.executable, "-m", "rooms.tests.e2e_harness"],
        timeout=HARNESS_TIMEOUT_SECONDS,
        stop_grace=20,
    )
    stdout, stderr = run.stdout, run.stderr
    if run.timed_out:
        pytest.fail(
            f"The harness ran over {HARNESS_TIMEOUT_SECONDS} s{run.leftovers}:\n{stderr[-6000:]}"
        )
    lines = [line for line in stdout.splitlines() if line.startswith("E2E-RESULT ")]
    if not lines:
        pytest.fail(
            f"The harness printed no result (exit {run.returncode}):\n"
            f"{stdout[-3000:]}\n{stderr[-6000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("E2E-RESULT "))
    if not result["ok"]:
        pytest.fail(
            f"{result['error']}\n{result.get('traceback', '')}\n{result.get('logs', '')}\n"
            f"participants' log:\n{stderr[-6000:]}"
        )
    return result


def test_a_call_survives_a_server_crash_and_bills_what_both_sides_saw() -> None:
    started = time.monotonic()
    result = _harness_run()
    call, server = result["call"], result["server"]
    expert, client = call["expert"], call["client"]
    truth = call["both_receiving_seconds"]
    billed = server["settlement"]["billable_seconds"]
    print(
        f"\ncall: {call['timeline']}\n"
        f"video frames received: expert {expert['video_frames']}, client {client['video_frames']}"
        f" (at the crash {call['frames_at_crash']}, at the end {call['frames_at_end']})\n"
        f"candidate types: expert {expert['candidate_type']}, client {client['candidate_type']}\n"
        f"ground truth (both receiving video): {truth} s; billed: {billed} s; "
        f"exact server intervals: {server['exact_seconds']} s\n"
        f"settlement: {server['settlement']['explanation']}\n"
        f"metered: {server['metered']}\n"
        f"harness {result['harness_seconds']} s, test {time.monotonic() - started:.1f} s"
    )

    # Media both ways, before the crash and after the resume, over one connection per side:
    # the socket moved, the media never stopped.
    for side in (expert, client):
        assert side["audio_frames"] > 0
        assert side["peer_connections"] == 1
        assert side["video_intervals"] == 1, "the video froze for over a second"
        # The namespace offers aiortc no host address: media went through coturn, with the
        # short-lived credentials from `welcome`.
        assert side["candidate_type"] == "relay"
        assert side["errors"] == []
    assert min(call["frames_at_crash"].values()) >= 150  # ~5 s of 30 fps video
    for who in ("expert", "client"):
        assert call["frames_at_end"][who] - call["frames_at_crash"][who] >= 150

    # The client's socket died with Daphne 2 and came back on Daphne 1 as a resume.
    assert client["close_codes"][0] == 1006
    assert [w["resumed"] for w in client["welcomes"]] == [False, True]
    assert client["server_url"].endswith(":8101")
    assert "peer_resumed" in expert["messages"]
    assert "peer_left" not in expert["messages"]
    assert "peer_joined" not in expert["messages"][expert["messages"].index("peer_resumed") :]
    assert call["timeline"]["peer_resumed"] - call["timeline"]["crash"] < 20

    # The expert ended it; both heard why and the client what it cost.
    assert expert["ended"]["reason"] == client["ended"]["reason"] == "ended_by_expert"
    assert expert["ended"]["charge"] is None
    assert client["ended"]["charge"]["billable_seconds"] == billed
    assert client["ended"]["charge"]["amount_minor"] == server["settlement"]["amount_minor"]
    assert (server["room_state"], server["close_reason"]) == ("closed", "ended_by_expert")
    assert result["sweeps"] >= 1, "beat's rooms_advance never ran during the call"

    # The server recorded what both sides saw (presences, media links, live window), and the
    # bill matches it.
    assert truth >= 20
    assert abs(server["exact_seconds"] - truth) <= 0.5
    assert server["call_stats"] >= 2
    assert {link["candidate_type"] for link in server["media_links"]} == {"relay"}
    assert abs(billed - truth) <= BILLING_TOLERANCE_SECONDS, (
        f"billed {billed} s, both sides received video for {truth} s "
        f"(the server's intervals in exact time: {server['exact_seconds']} s; "
        f"metered as {server['metered']})"
    )
    assert result["harness_seconds"] < 90
