"""The Redis cache, failing open.

The cache holds only what can be lost: allauth's login rate limits and used TOTP codes, and the
POST rate limits of config/ratelimits.py. None of it is worth refusing a sign-in over, so when
Redis cannot be reached a read is a miss, a write is dropped and `add` answers "added" (allauth
takes a lock with `add` and would otherwise wait a second and answer 429). Each failure is
logged; for RETRY_AFTER_SECONDS after one the cache does not try Redis at all, so a Redis that
hangs costs one timeout per process and interval, not one per call. After that it tries again:
it recovers by itself when Redis is back.

What this gives up while Redis is away: login and POST rate limits do not count, and a TOTP
code could be replayed within its 30 s window by someone who also has the password.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What counts as "Redis is not there" (not a programming error such as a bad key type).
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class FailOpenRedisCache(RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS", {}))
        self._retry_after = float(options.pop("RETRY_AFTER_SECONDS", 5))
        super().__init__(server, {**params, "OPTIONS": options})
        self._down_until = 0.0

    def _guarded(self, operation: str, call: Callable[[], T], fallback: T) -> T:
        if time.monotonic() < self._down_until:
            return fallback
        try:
            return call()
        except UNREACHABLE as error:
            self._down_until = time.monotonic() + self._retry_after
            logger.warning(
                "Cache unreachable (%s: %s); %s answers as if empty for %.0f s.",
                type(error).__name__,
                error,
                operation,
                self._retry_after,
            )
            return fallback

    def add(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> bool:
        return self._guarded(
            "add", lambda: super(FailOpenRedisCache, self).add(key, value, timeout, version), True
        )

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return self._guarded(
            "get", lambda: super(FailOpenRedisCache, self).get(key, default, version), default
        )

    def set(self, key: Any, value: Any, timeout: Any = None, version: int | None = None) -> None:
        self._guarded(
            "set", lambda: super(FailOpenRedisCache, self).set(key, value, timeout, version), None
        )

    def touch(self, key: Any, timeout: Any = None, version: int | None = None) -> bool:
        return self._guarded(
            "touch", lambda: super(FailOpenRedisCache, self).touch(key, timeout, version), False
        )

    def delete(self, key: Any, version: int | None = None) -> bool:
        return self._guarded(
            "delete", lambda: super(FailOpenRedisCache, self).delete(key, version), False
        )

    def get_many(self, keys: Iterable[Any], version: int | None = None) -> dict[Any, Any]:
        return self._guarded(
            "get_many", lambda: super(FailOpenRedisCache, self).get_many(keys, version), {}
        )

    def has_key(self, key: Any, version: int | None = None) -> bool:
        return self._guarded(
            "has_key", lambda: super(FailOpenRedisCache, self).has_key(key, version), False
        )

    def incr(self, key: Any, delta: int = 1, version: int | None = None) -> Any:
        # None, not a number: django-ratelimit reads it as "the count failed" and, with
        # RATELIMIT_FAIL_OPEN, lets the request through.
        return self._guarded(
            "incr", lambda: super(FailOpenRedisCache, self).incr(key, delta, version), None
        )

    def set_many(
        self, data: dict[Any, Any], timeout: Any = None, version: int | None = None
    ) -> list[Any]:
        return self._guarded(
            "set_many",
            lambda: super(FailOpenRedisCache, self).set_many(data, timeout, version),
            list(data),
        )

    def delete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        self._guarded(
            "delete_many", lambda: super(FailOpenRedisCache, self).delete_many(keys, version), None
        )

    def clear(self) -> None:
        self._guarded("clear", lambda: super(FailOpenRedisCache, self).clear(), None)
