"""The end-to-end call, run by test_call_e2e.py inside a loopback-only network namespace:

    unshare -n sh -c 'ip link set lo up && exec .venv/bin/python -m rooms.tests.e2e_harness'

It starts the deployment (e2e_services.py), books and pays a session through the services,
and plays the call with two aiortc participants: the expert on Daphne 1, the client on Daphne 2;
media both ways; Daphne 2 is killed (SIGKILL) and the client's socket comes back on Daphne 1
within the grace while the media goes on; the expert ends the call. It prints one line,
`E2E-RESULT <json>`, with what both sides saw and what the server billed; the test judges it.
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
import json
import logging
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from rooms.tests.e2e_services import (
    STOP_SIGNALS,
    Deployment,
    http_ok,
    loopback_only,
    wait_for,
)
from rooms.tools.participant import Participant, overlap_seconds

SERVERS = ("http://127.0.0.1:8101", "http://127.0.0.1:8102")
# Media before the crash, and after the socket is back.
BEFORE_CRASH_SECONDS = 10.0
AFTER_RESUME_SECONDS = 12.0
FIRST_FRAMES = 15  # frames each way that say media flows
LIMIT_SECONDS = 120


class Stopped(Exception):
    """Over the time limit (SIGALRM), or asked to stop (SIGTERM); the `with Deployment` block
    still stops every service."""


def _give_up(signum: int, frame: Any) -> None:
    raise Stopped(f"stopped by signal {signum} (over {LIMIT_SECONDS} s, or asked to stop)")


def _stop_call_on_signals() -> None:
    """During the call a signal cancels it instead: an exception raised wherever the signal
    lands could leave aiortc half-way through a step, and the loop's cleanup waiting forever."""
    loop, call = asyncio.get_running_loop(), asyncio.current_task()
    assert call is not None
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, call.cancel)


def main() -> int:
    # `kill -USR1` prints every thread's stack: what a hung harness is waiting for.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _give_up)
    signal.alarm(LIMIT_SECONDS)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr
    )
    logging.getLogger("aioice").setLevel(logging.WARNING)
    logging.getLogger("aiortc").setLevel(logging.WARNING)
    started = time.monotonic()
    if not loopback_only():
        result: dict[str, Any] = {
            "ok": False,
            "error": "Not in a loopback-only network namespace: run under `unshare -n`.",
        }
    else:
        with Deployment(keep=bool(os.environ.get("E2E_KEEP"))) as deployment:
            try:
                result = {"ok": True, **run(deployment)}
            except Exception as error:
                result = {
                    "ok": False,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                    "logs": deployment.logs(),
                }
    result["harness_seconds"] = round(time.monotonic() - started, 1)
    print("E2E-RESULT " + json.dumps(result, default=str), flush=True)
    return 0 if result["ok"] else 1


def run(deployment: Deployment) -> dict[str, Any]:
    database_url = deployment.postgres()
    redis_url = deployment.redis()
    deployment.coturn()
    env = deployment.django_env(database_url, redis_url)
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    people = seed()
    first = deployment.daphne("daphne-1", 8101, env)
    second = deployment.daphne("daphne-2", 8102, env)
    celery = deployment.celery(env)
    for url, service in zip(SERVERS, (first, second), strict=True):
        wait_for(service.name, functools.partial(http_ok, f"{url}/healthz"), 30, service.log)
    ready_at = time.monotonic()
    try:
        call = asyncio.run(play(people, lambda: deployment.kill(second)))
    except asyncio.CancelledError:
        raise Stopped(f"stopped during the call (over {LIMIT_SECONDS} s, or asked to)") from None
    finally:
        for signum in STOP_SIGNALS:  # asyncio put the default handlers back
            signal.signal(signum, _give_up)
    call["call_seconds"] = round(time.monotonic() - ready_at, 1)
    return {
        "call": call,
        "server": billed(people),
        "sweeps": celery.log.read_text().count("rooms.tasks.rooms_advance[") // 2,
    }


def seed() -> dict[str, Any]:
    """An approved expert, a client with a paid seat, and the room open now."""
    import time_machine
    from django.utils import timezone

    from accounts.tests.factories import PASSWORD, UserFactory
    from rooms import services
    from rooms.models import Pricing, Room, RoomState
    from rooms.tests.factories import OfferingFactory, expert_create, seat_pay, weekdays_available

    now = timezone.now()
    # The expert's zone puts their local time near noon, so the hour of availability below
    # never crosses midnight, whatever time the test runs.
    offset = 12 - now.hour
    zone = "Etc/GMT" + (f"{-offset:+d}" if offset else "")
    expert = expert_create(time_zone=zone)
    start = (now - timedelta(minutes=1)).replace(second=0, microsecond=0)
    local = start.astimezone(ZoneInfo(zone))
    weekdays_available(
        expert,
        start=local.time(),
        end=(local + timedelta(minutes=60)).time(),
        days=range(local.weekday(), local.weekday() + 1),
    )
    offering = OfferingFactory.create(
        expert=expert, length_minutes=60, pricing=Pricing.PER_MINUTE, price_minor=100
    )
    client = UserFactory.create(time_zone="UTC")
    # Booked and paid the day before, as a client would.
    with time_machine.travel(start - timedelta(days=1), tick=False):
        seat = seat_pay(services.booking_reserve(client, offering, start))
    services.rooms_advance()
    room = Room.objects.get(pk=seat.room_id)
    if room.state != RoomState.OPEN:
        raise RuntimeError(f"The room should be open now; it is {room.state}.")
    return {
        "room": room.pk,
        "seat": seat.pk,
        "payment": seat.payment_id,
        "expert": {"id": expert.pk, "email": expert.email, "password": PASSWORD},
        "client": {"id": client.pk, "email": client.email, "password": PASSWORD},
    }


async def play(people: dict[str, Any], crash: Any) -> dict[str, Any]:
    expert_id, client_id = people["expert"]["id"], people["client"]["id"]
    expert = Participant(
        [SERVERS[0]], people["expert"]["email"], people["expert"]["password"], people["room"],
        name="expert",
    )  # fmt: skip
    # The client is on Daphne 2; when its socket drops it comes back on the next server.
    client = Participant(
        [SERVERS[1], SERVERS[0]], people["client"]["email"], people["client"]["password"],
        people["room"], name="client",
    )  # fmt: skip
    timeline: dict[str, float] = {"start": time.time()}
    _stop_call_on_signals()
    try:
        await expert.join()
        timeline["expert_joined"] = time.time()
        await client.join()
        timeline["client_joined"] = time.time()

        def frames(who: Participant, peer: int) -> int:
            link = who.links.get(peer)
            return link.frames.count if link else 0

        def flowing(minimum: int) -> bool:
            return frames(expert, client_id) >= minimum and frames(client, expert_id) >= minimum

        await expert.until(lambda: flowing(FIRST_FRAMES), timeout=20)
        timeline["media_flowing"] = time.time()
        await asyncio.sleep(BEFORE_CRASH_SECONDS)

        at_crash = {"expert": frames(expert, client_id), "client": frames(client, expert_id)}
        mark = len(expert.messages)
        timeline["crash"] = time.time()
        await asyncio.to_thread(crash)
        resumed = await expert.wait_for("peer_resumed", since=mark, timeout=20)
        timeline["peer_resumed"] = time.time()
        if resumed["peer_id"] != client_id:
            raise RuntimeError(f"peer_resumed names {resumed['peer_id']}, not the client.")
        await asyncio.sleep(AFTER_RESUME_SECONDS)
        at_end = {"expert": frames(expert, client_id), "client": frames(client, expert_id)}

        await expert.end()
        await expert.wait_for("ended", timeout=10)
        await client.wait_for("ended", timeout=10)
        ended_at = {
            who.name: next(at for at, m in who.messages if m["type"] == "ended")
            for who in (expert, client)
        }
        timeline["ended"] = ended_at["expert"]
        # Ground truth: the time both sides were receiving the other's video.
        seen_by_expert = expert.links[client_id].frames.until(ended_at["expert"])
        seen_by_client = client.links[expert_id].frames.until(ended_at["client"])
        return {
            "timeline": {k: round(v - timeline["start"], 2) for k, v in timeline.items()},
            "frames_at_crash": at_crash,
            "frames_at_end": at_end,
            "both_receiving_seconds": round(overlap_seconds(seen_by_expert, seen_by_client), 2),
            "expert": report(expert, client_id, seen_by_expert),
            "client": report(client, expert_id, seen_by_client),
        }
    finally:
        await expert.close()
        await client.close()


def report(who: Participant, peer: int, seen: list[list[float]]) -> dict[str, Any]:
    link = who.links[peer]
    welcomes = [m for _, m in who.messages if m["type"] == "welcome"]
    return {
        "video_frames": link.frames.count,
        "audio_frames": link.audio_frames,
        "video_intervals": len(seen),
        "video_seconds": round(sum(b - a for a, b in seen), 2),
        "candidate_type": link.candidate_type,
        "peer_connections": link.connections,
        "welcomes": [{"resumed": m["resumed"], "peers": m["peers"]} for m in welcomes],
        "server_url": who.server,
        "ended": who.ended,
        "errors": who.errors,
        "close_codes": who.close_codes,
        "messages": [m["type"] for _, m in who.messages],
    }


def billed(people: dict[str, Any]) -> dict[str, Any]:
    """What the server recorded and settled."""
    from billing.models import Settlement
    from rooms.models import CallStats, MediaLink, Presence, Room, RoomEvent

    room = Room.objects.get(pk=people["room"])
    settlement = Settlement.objects.get(payment_id=people["payment"])
    presences = Presence.objects.filter(room=room)
    links = MediaLink.objects.filter(room=room)

    def spans(rows: Any, start: str, end: str) -> list[list[float]]:
        return _union([[getattr(r, start).timestamp(), getattr(r, end).timestamp()] for r in rows])

    # The same intersection as the metering, in exact time instead of whole seconds: where
    # the billed number differs from the truth, this tells rounding from recording.
    if room.live_at is None or room.closed_at is None:
        raise RuntimeError("The room never went live, or is not closed.")
    exact = [[room.live_at.timestamp(), room.closed_at.timestamp()]]
    for rows in (
        presences.filter(user_id=people["expert"]["id"]),
        presences.filter(user_id=people["client"]["id"]),
    ):
        exact = _intersect(exact, spans(rows, "opened_at", "closed_at"))
    exact = _intersect(exact, spans(links, "started_at", "ended_at"))
    closed = RoomEvent.objects.get(room=room, kind="closed")
    return {
        "exact_seconds": round(sum(b - a for a, b in exact), 2),
        # The metering's own whole-second intervals (from the close event).
        "metered": closed.data["seats"],
        "call_stats": CallStats.objects.filter(room=room).count(),
        "room_state": room.state,
        "close_reason": room.close_reason,
        "live_seconds": (room.closed_at - room.live_at).total_seconds()
        if room.closed_at and room.live_at
        else None,
        "settlement": {
            "rule": settlement.rule,
            "amount_minor": settlement.amount_minor,
            "billable_seconds": settlement.inputs.get("billable_seconds"),
            "inputs": settlement.inputs,
            "explanation": settlement.explanation,
        },
        "presences": [
            {
                "user": p.user_id,
                "seconds": _seconds(p.opened_at, p.closed_at),
                "reason": p.close_reason,
            }
            for p in presences.order_by("opened_at")
        ],
        "media_links": [
            {
                "reported_by": link.reported_by_id,
                "seconds": _seconds(link.started_at, link.ended_at),
                "candidate_type": link.candidate_type,
            }
            for link in links.order_by("started_at")
        ],
    }


def _union(intervals: list[list[float]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def _intersect(a: list[list[float]], b: list[list[float]]) -> list[list[float]]:
    return [
        [max(x[0], y[0]), min(x[1], y[1])]
        for x in a
        for y in b
        if max(x[0], y[0]) < min(x[1], y[1])
    ]


def _seconds(start: Any, end: Any) -> float | None:
    return round((end - start).total_seconds(), 2) if end else None


if __name__ == "__main__":
    sys.exit(main())
