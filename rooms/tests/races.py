"""Real concurrency for the race tests: actions released at once, each in its own thread with
its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connection

from billing.errors import BillingError
from rooms.errors import RoomsError


def race(actions: list[Callable[[], object]]) -> list[str]:
    """Run the actions in threads released together; collect "ok", a refusal's message, or
    "crashed: …" for anything else (a deadlock, a constraint the code did not expect)."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(action: Callable[[], object]) -> None:
        try:
            barrier.wait()
            action()
            result = "ok"
        except (RoomsError, BillingError) as error:
            result = str(error)
        except Exception as error:  # anything else is a bug the test must show
            result = f"crashed: {error!r}"
        finally:
            connection.close()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes
