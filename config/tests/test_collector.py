"""When the serving process runs a full garbage collection: as sockets close, not as they beat."""

from __future__ import annotations

import asyncio
import gc

import pytest

from config import collector
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
    assert await churn(garbage, opened=3 * CLOSED_MIN, gone=CLOSED_MIN + 10) == 1
    assert garbage.closed == 0
    assert await churn(garbage, gone=CLOSED_MIN - 10) == 1


async def test_with_many_sockets_open_a_quarter_of_them_must_close_first() -> None:
    garbage = Counted()
    assert await churn(garbage, opened=10_000, gone=1_999) == 0
    # 8,000 open, 2,000 closed: a quarter.
    assert await churn(garbage, gone=1) == 1


async def test_a_full_collection_of_cpythons_own_counts_as_one() -> None:
    collector.collector_configure()
    try:
        for _ in range(CLOSED_MIN - 1):
            collector.sockets.opened()
            collector.sockets.gone()
        gc.collect()
        assert collector.sockets.closed == 0
    finally:
        gc.callbacks.remove(collector._full_collection_seen)
