"""A payment worker in its own OS process, for the exactly-once tests.

    python -m billing.tests.once_worker --name w1 --commands 4,5,6 --barrier DIR --parties 2 \
        --log FILE [--die-after-send]

The environment carries the settings (DATABASE_URL of the test database, the Stripe test
server). For each command the worker waits at a file barrier until all `--parties` workers are
there, so they call `command_execute` at the same moment, then runs it. Every capture request
it sends is appended to `--log` as one JSON line *before* anything else happens, so the record
survives the worker's death. With `--die-after-send` the worker exits abruptly right after the
provider answered and before the answer is recorded: a worker killed between sending and
recording.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# The exit status of a worker that died on purpose after sending.
KILLED_EXIT_STATUS = 75
BARRIER_TIMEOUT_SECONDS = 60.0


def _log(path: Path, **record: Any) -> None:
    # Opened and closed per record: os._exit flushes nothing, so nothing may wait in a buffer.
    with path.open("a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


def _barrier(directory: Path, round_: int, name: str, parties: int) -> None:
    """Arrive, then wait until every party has arrived (files survive across processes)."""
    (directory / f"{round_}-{name}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while len(list(directory.glob(f"{round_}-*"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the other workers never reached round {round_}.")
        time.sleep(0.0002)


def _record_capture_requests(name: str, log_path: Path) -> None:
    """Wrap both gateways' capture so that each request sent and its answer are logged."""
    from billing.gateways.base import GatewayError, Intent
    from billing.gateways.local import LocalGateway
    from billing.gateways.stripe import StripeGateway

    for gateway_class in (LocalGateway, StripeGateway):
        original = gateway_class.intent_capture

        def recorded(
            self: Any,
            intent_id: str,
            *,
            amount_minor: int,
            idempotency_key: str,
            _original: Any = original,
        ) -> Intent:
            started = time.time()
            try:
                intent: Intent = _original(
                    self, intent_id, amount_minor=amount_minor, idempotency_key=idempotency_key
                )
            except GatewayError as error:
                _log(
                    log_path,
                    worker=name,
                    intent=intent_id,
                    amount=amount_minor,
                    key=idempotency_key,
                    answer="refused",
                    error=f"{type(error).__name__}: {error}",
                    started=started,
                )
                raise
            _log(
                log_path,
                worker=name,
                intent=intent_id,
                amount=amount_minor,
                key=idempotency_key,
                answer="captured",
                status=intent.status,
                started=started,
            )
            return intent

        gateway_class.intent_capture = recorded  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--commands", required=True, help="command ids, comma-separated")
    parser.add_argument("--barrier", required=True, type=Path)
    parser.add_argument("--parties", type=int, default=1)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--die-after-send", action="store_true")
    args = parser.parse_args(argv)

    import django

    django.setup()
    from django.db import connection

    from billing import services
    from billing.services import commands

    _record_capture_requests(args.name, args.log)
    if args.die_after_send:

        def die(command: Any, outcome: Any) -> None:
            _log(args.log, worker=args.name, died_before_recording=command.pk)
            os._exit(KILLED_EXIT_STATUS)

        commands._command_succeed = die

    # Connect before the barrier, so the race is between the commands, not the connects.
    connection.ensure_connection()
    results = []
    for round_, command_id in enumerate(int(pk) for pk in args.commands.split(",")):
        _barrier(args.barrier, round_, args.name, args.parties)
        started = time.time()
        state = services.command_execute(command_id)
        results.append(
            {"command": command_id, "state": state, "started": started, "ended": time.time()}
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
