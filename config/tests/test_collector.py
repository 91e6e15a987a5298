"""When the serving process runs a full garbage collection: as sockets close, not as they beat."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator

from config import collector
from config.asgi import application
from config.collector import CLOSED_MIN, SocketGarbage


class Counted(SocketGarbage):
    def __init__(self) -> None:
        super().__init__()
        self.collections = 0

    def collect(self) -> None:
        self.collections += 1
        super().collect()


@pytest.fixture(autouse=True)
def no_reap_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "REAP_WAIT_S", 0.0)


async def churn(garbage: Counted, opened: int = 0, gone: int = 0) -> int:
    """Sockets open and close; the full collections started so far once the loop has run."""
    for _ in range(opened):
        garbage.opened()
    for _ in range(gone):
        garbage.gone()
    for _ in range(3):
        await asyncio.sleep(0)
    return garbage.collections


async def test_a_few_hundred_closes_start_no_full_collection() -> None:
    assert await churn(Counted(), opened=CLOSED_MIN, gone=CLOSED_MIN - 1) == 0


async def test_closes_start_one_full_collection_then_count_again() -> None:
    garbage = Counted()
    assert await churn(garbage, opened=3 * CLOSED_MIN, gone=CLOSED_MIN) == 1
    assert garbage.closed == 0
    assert await churn(garbage, gone=CLOSED_MIN - 1) == 1
    assert await churn(garbage, gone=1) == 2


async def test_with_many_sockets_open_a_quarter_of_them_must_close_first() -> None:
    garbage = Counted()
    assert await churn(garbage, opened=10_000, gone=1_999) == 0
    # 8,000 open, 2,000 closed: a quarter.
    assert await churn(garbage, gone=1) == 1


async def test_closes_while_a_collection_waits_count_toward_the_next() -> None:
    garbage = Counted()
    garbage.opened()
    for _ in range(CLOSED_MIN):
        garbage.gone()
    # Before the collection runs (Daphne may still hold these sockets): one more round's worth.
    for _ in range(CLOSED_MIN - 1):
        garbage.gone()
    assert await churn(garbage) == 1
    assert garbage.closed == CLOSED_MIN - 1
    assert await churn(garbage, gone=1) == 2


def test_a_collection_left_on_an_ended_loop_does_not_stop_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    garbage = Counted()

    async def closes() -> None:
        for _ in range(CLOSED_MIN):
            garbage.gone()

    # The first loop ends before its collection's timer runs (as a test's loop does).
    monkeypatch.setattr(collector, "REAP_WAIT_S", 60.0)
    asyncio.run(closes())
    assert garbage.collections == 0
    monkeypatch.setattr(collector, "REAP_WAIT_S", 0.0)

    async def closes_then_wait() -> None:
        await closes()
        await asyncio.sleep(0.01)

    asyncio.run(closes_then_wait())
    assert garbage.collections == 1


@pytest.mark.django_db(transaction=True)
async def test_every_socket_is_counted_even_one_refused_before_any_consumer() -> None:
    before = (collector.sockets.open, collector.sockets.closed)
    foreign = WebsocketCommunicator(
        application, "/ws/rooms/1/", headers=[(b"origin", b"http://evil.test")]
    )
    connected, _ = await foreign.connect()
    assert connected
    assert (await foreign.receive_json_from())["code"] == "forbidden_origin"
    assert (await foreign.receive_output())["code"] == 4406
    await foreign.wait()
    assert (collector.sockets.open, collector.sockets.closed) == (before[0], before[1] + 1)
