"""Two real Daphne processes for the tests of staff acting on live rooms, on this test run's
database and on the Redis channel layer, as two servers of a deployment are."""

from __future__ import annotations

import functools
import re
import signal
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import FrameType
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from django.db import connection

from rooms.tests.e2e_services import (
    Deployment,
    DeploymentError,
    Service,
    http_ok,
    tail,
    wait_for,
)

# A loaded 2-core machine takes a few seconds to import Django into a fresh process.
DAPHNE_START_SECONDS = 60
LISTENING = re.compile(r"Listening on TCP address 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class Daphnes:
    deployment: Deployment
    # Where each process listens: "http://127.0.0.1:<port>".
    urls: tuple[str, str]
    # The channel-layer prefix the processes use; the test process must publish under it too.
    channel_prefix: str

    def logs(self) -> str:
        return self.deployment.logs()


def _listening_port(service: Service) -> int | None:
    """The port Daphne reports it bound (it is started on port 0, so two runs never race for
    a port picked in advance)."""
    if service.process.poll() is not None:
        raise DeploymentError(
            f"{service.name} exited with {service.process.returncode}:\n{tail(service.log)}"
        )
    found = LISTENING.search(service.log.read_text(errors="replace"))
    return int(found.group(1)) if found else None


def _listening(service: Service) -> bool:
    return _listening_port(service) is not None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # KeyboardInterrupt unwinds through the fixture's `with Deployment`, which stops the
    # processes; the default SIGTERM (what `timeout` sends) would orphan them, since each runs
    # in a session of its own.
    raise KeyboardInterrupt(f"stopped by signal {signum}")


@pytest.fixture(scope="module")
def daphnes(django_db_setup: None) -> Iterator[Daphnes]:
    """Two Daphne processes serving `config.asgi:application` from pytest-django's test
    database, on a channel-layer prefix of their own; stopped (SIGTERM, then SIGKILL) at the end
    of the module, whatever happened. Module-scoped: the transactional tests empty the database
    after each test, and the processes keep no state of their own between tests."""
    if not settings.REDIS_URL:
        pytest.fail("These tests need the Redis channel layer: source scripts/test-env.sh.")
    if not settings.DATABASE_URL.startswith(("postgres://", "postgresql://")):
        pytest.fail("These tests need PostgreSQL (DATABASE_URL): source scripts/test-env.sh.")
    test_database = connection.settings_dict["NAME"]
    database_url = urlsplit(settings.DATABASE_URL)._replace(path=f"/{test_database}").geturl()
    base_prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    prefix = f"{base_prefix}-live-{uuid.uuid4().hex[:8]}"
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Deployment() as deployment:
            env = deployment.django_env(database_url, settings.REDIS_URL)
            env.update(
                CHANNEL_LAYER_PREFIX=prefix,
                # The session cookies are made in the test process: the session's auth hash
                # is checked with this key.
                SECRET_KEY=settings.SECRET_KEY,
                # What the processes queue (a dropped socket's grace check) goes nowhere:
                # there is no worker here, and nothing may be left in the shared Redis.
                CELERY_BROKER_URL="memory://localhost/",
                DATABASE_POOL_MIN="1",
                DATABASE_POOL_MAX="4",
            )
            # Both start at once; each is then waited for until it answers /healthz (its
            # database, the Redis channel layer and the broker all up).
            a, b = [deployment.daphne(name, 0, env) for name in ("daphne-a", "daphne-b")]
            yield Daphnes(deployment, (_daphne_url(a), _daphne_url(b)), prefix)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _daphne_url(service: Service) -> str:
    ready = functools.partial(_listening, service)
    wait_for(f"{service.name}'s port", ready, DAPHNE_START_SECONDS, service.log)
    url = f"http://127.0.0.1:{_listening_port(service)}"
    wait_for(service.name, functools.partial(http_ok, f"{url}/healthz"), 30, service.log)
    return url


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that ran on the Daphne processes carries the tails of their logs."""
    report = yield
    processes = getattr(item, "funcargs", {}).get("daphnes")
    if report.failed and isinstance(processes, Daphnes):
        report.sections.append(("Daphne processes", processes.logs()))
    return report
