"""1,000 faulty calls: the production layout while its parts fail, and what was kept.

Runs `rooms/tests/fault_harness.py` in a network namespace that has only loopback (`unshare -n`,
so root): a throwaway PostgreSQL, localstripe behind a proxy that can fail, and
`scripts/cluster.sh` with 3 Daphne processes behind HAProxy, the channel layer on two Redis
shards, a broker Redis, 2 Celery workers, beat and coturn. It books the calls (a real hold at
the provider for each seat) and plays them with protocol-level participants speaking the
page's signaling through the balancer — and two dozen (`--media`, 24) with aiortc participants
sending real audio and video through the cluster's coturn, whose truth is the video each side
received — each call on a random script, while it injects every
kind of fault: a participant's network dropping (they come back through the balancer, often
to another process), Daphne, Celery worker and beat SIGKILLed (and brought back, as a
supervisor would), a channel-layer Redis shard and PostgreSQL restarted, the provider
answering errors or hanging past the gateway's time limit (before or after acting), duplicate
and concurrent closes, staff ends and expert ends.

The participants' scripts are the ground truth of when both sides were in the call with media
up. After the calls and the payment commands, the harness checks: one capture at most per
seat (`double_captures`), a settlement and the matching provider state for every seat
(`lost_settlements`), no authorization left at the provider (`holds_left_at_provider`), every
room closed within 30 s of its end (`stuck_rooms`), the billed seconds against the truth
(`max_billing_error_s`), and no unhandled exception in any Django process's log (`crashes`).

Baseline: the calls no fault touched, in the same run. The table shows, for each kind of
fault, the calls running while it lasted, the calls that felt it (a call's own fault; for a
Daphne killed, the calls whose sockets it dropped; for Redis or PostgreSQL restarting, the calls
told `unavailable`; for a worker or beat down, the rooms that closed meanwhile; for the
provider, the seats whose requests failed), the sockets it dropped, the largest billing error
among the calls it hit and how they ended, next to the untouched calls' largest error.

    .venv/bin/python bench/faults.py [--json] [--calls N] [--media N] [--seed N]   (as root)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from _table import number, table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rooms.tests.e2e_services import namespace_run, namespace_unready  # noqa: E402

DEFAULT_CALLS = 1000
DEFAULT_MEDIA = 24


def harness_command(calls: int, out: Path, seed: int, media: int) -> list[str]:
    # Calls start over calls × 0.4 s and last 60–90 s: about 150 at once for 1,000 calls,
    # with a fault of the infrastructure every 8 s (each kind about every minute).
    return [
        sys.executable,
        "-m",
        "rooms.tests.fault_harness",
        "--calls",
        str(calls),
        "--faults-every",
        "8",
        "--seed",
        str(seed),
        "--media",
        str(media),
        "--json",
        str(out),
    ]


def format_table(result: dict[str, Any]) -> str:
    details = result["details"]
    rows = []
    for kind, effect in details["by_kind"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(effect["close_reasons"].items()))
        rows.append(
            [
                kind,
                str(effect["injected"]),
                str(effect["calls_running"]),
                str(effect["calls_hit"]),
                str(effect["sockets_dropped"]),
                number(effect["max_billing_error_s"], ".2f"),
                reasons,
            ]
        )
    real = details["real_media"]
    for name, group, note in (
        ("(calls with real media)", real, f"stuck {len(real['stuck'])}, lost {len(real['lost'])}"),
        ("(baseline: no fault)", details["untouched"], ""),
    ):
        error = number(group["max_billing_error_s"], ".2f")
        rows.append([name, "-", "-", str(group["calls"]), "-", error, note])
    header = [
        "fault",
        "injected",
        "calls running",
        "calls hit",
        "sockets dropped",
        "max billing error s",
        "how the calls ended",
    ]
    return table(header, rows, left=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--media", type=int, default=DEFAULT_MEDIA, help="calls with real media")
    args = parser.parse_args()
    unready = namespace_unready(
        ("unshare", "ip", "redis-server", "turnserver", "haproxy"), "bench/faults.py"
    )
    if unready:
        print(f"faults: {unready}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        out = Path(work) / "faults.json"
        # Long enough for 1,000 calls (about 15 min here) with room to spare.
        limit = 600 + args.calls * 1.5
        run = namespace_run(
            harness_command(args.calls, out, args.seed, args.media),
            timeout=limit,
            stop_grace=60,
            merge_stderr=True,
        )
        if run.returncode != 0 or not out.exists():
            print(run.stdout[-6000:], file=sys.stderr)
            print(f"faults: the harness failed ({run.returncode}){run.leftovers}", file=sys.stderr)
            return 1
        result = json.loads(out.read_text())
    summary = result["summary"]
    load = os.getloadavg()
    if args.json:
        print(
            json.dumps(
                {
                    "summary": summary,
                    "bench": "faults",
                    "seconds": result["seconds"],
                    "load_average": [round(x, 2) for x in load],
                    "details": result["details"],
                }
            )
        )
    else:
        print(run.stdout)
        print(
            f"{summary['calls']} calls on 3 Daphnes, 2 Celery workers and beat, with faults; "
            "baseline = the calls no fault touched, in the same run"
        )
        print(format_table(result))
        print(
            f"double_captures {summary['double_captures']}, lost_settlements "
            f"{summary['lost_settlements']}, holds_left_at_provider "
            f"{summary['holds_left_at_provider']}, stuck_rooms {summary['stuck_rooms']}, "
            f"max_billing_error_s {summary['max_billing_error_s']}, crashes {summary['crashes']}"
        )
        for worst in result["details"]["worst_billing"][:5]:
            print(
                f"call {worst['call']}: billed {worst['billed_s']} s, truth {worst['truth_s']} s "
                f"({worst['reason']}; script {worst['script']})"
            )
        print(f"{result['seconds']:.0f} s; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    failed = (
        summary["double_captures"]
        or summary["lost_settlements"]
        or summary["holds_left_at_provider"]
        or summary["stuck_rooms"]
        or summary["crashes"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
