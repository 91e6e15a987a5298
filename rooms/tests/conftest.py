"""Shared fixtures of the rooms tests: a known "now" and an expert who can be booked."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import time_machine

from rooms.models import Offering
from rooms.tests.factories import NOW, OfferingFactory, expert_create, weekdays_available


@pytest.fixture
def frozen_now() -> Iterator[None]:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def offering() -> Offering:
    """A 60-minute private offering of an expert working 09:00–17:00 UTC every day."""
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    return OfferingFactory.create(expert=expert)
