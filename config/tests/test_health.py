from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any, cast

import pytest
from django.db import connection
from django.test import Client
from pytest_django.fixtures import Settings

from config.celery import app as celery_app

pytestmark = pytest.mark.django_db


@pytest.fixture
def closed_port() -> int:
    """A loopback port nobody listens on: bound, noted, released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def broker_url() -> Iterator[None]:
    original = celery_app.conf.broker_url
    yield
    celery_app.conf.update(broker_url=original)


def test_healthz_is_ok_when_postgresql_redis_and_broker_answer(client: Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["status"] == "ok"
    assert body["down"] == []
    assert set(body["components"]) == {"database", "channel_layer", "broker"}
    assert all(part["status"] == "up" for part in body["components"].values())


def test_healthz_names_redis_components_down_when_redis_port_is_closed(
    client: Client,
    settings: Settings,
    closed_port: int,
    broker_url: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = f"redis://127.0.0.1:{closed_port}/0"
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "rooms.layers.RelayPubSubChannelLayer",
            "CONFIG": {"hosts": [dead]},
        }
    }
    celery_app.conf.update(broker_url=dead)

    with caplog.at_level(logging.ERROR, logger="config.health"):
        response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "down"
    assert body["down"] == ["channel_layer", "broker"]
    assert body["components"]["database"]["status"] == "up"
    # The public answer names the component; why it is down is only in the log.
    assert str(closed_port) not in response.content.decode()
    assert str(closed_port) in caplog.text


@pytest.mark.django_db(transaction=True)
def test_healthz_names_the_database_down_when_postgresql_does_not_answer(
    client: Client, closed_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Outside a test transaction the connection (and its pool, which is made again from the
    # settings when next needed) can be closed and pointed at a port where no PostgreSQL
    # listens; the probe's query must then fail to connect.
    connection.close()
    cast(Any, connection).close_pool()  # PostgreSQL's wrapper; the stubs lack it
    original = connection.settings_dict["PORT"]
    connection.settings_dict["PORT"] = closed_port
    try:
        with caplog.at_level(logging.ERROR, logger="config.health"):
            response = client.get("/healthz")
    finally:
        connection.close()
        cast(Any, connection).close_pool()
        connection.settings_dict["PORT"] = original

    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["database"]
    # With the connection pool the probe times out waiting for a connection the pool keeps
    # failing to open (the pool logs why, from its own thread).
    assert "health: database did not answer" in caplog.text
