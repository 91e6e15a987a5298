"""Fixtures every test gets: a clean cache and Celery running tasks inline."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.cache import cache

from config.celery import app as celery_app

# The localstripe server and the settings that point Stripe at it, for every app's tests (one
# server per session, whichever apps ask for it).
pytest_plugins = ["billing.tests.localstripe"]


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    # allauth keeps rate limits and used TOTP codes in the (Redis) cache; one test's login
    # attempts must not throttle the next test's.
    cache.clear()
    yield


@pytest.fixture(autouse=True, scope="session")
def _celery_eager() -> Iterator[None]:
    # Tasks run inline so a test sees their effect; the broker itself is checked by /healthz.
    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    yield
