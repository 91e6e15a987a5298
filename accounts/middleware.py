from __future__ import annotations

import zoneinfo
from collections.abc import Callable
from urllib.parse import unquote

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from accounts.choices import time_zone_names

# Set by static/js/timezone.js from the browser, so anonymous visitors see local times too.
TIME_ZONE_COOKIE = "tz"
# The longest IANA name is 32 characters; anything much longer is not a zone, and is not
# worth decoding.
_COOKIE_MAX_LENGTH = 100


def time_zone_from_cookie(value: str) -> str | None:
    """The IANA zone a `tz` cookie names, or None when it names none.

    The script writes the name as it is ("America/Los_Angeles"), but browsers that ran an older
    script keep it percent-encoded ("America%2FLos_Angeles") for a year, and cookies can carry
    quotes; both are read. Anything that is not a known zone after that is refused, so a
    tampered cookie only gets the default (UTC), never an error.
    """
    if not value or len(value) > _COOKIE_MAX_LENGTH:
        return None
    name = unquote(value.strip().strip('"')).strip()
    return name if name in time_zone_names() else None


class TimezoneMiddleware:
    """Render times in the viewer's zone: their account's, else their browser's, else UTC."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.user.is_authenticated:
            name: str | None = request.user.time_zone
            if name not in time_zone_names():
                name = None
        else:
            name = time_zone_from_cookie(request.COOKIES.get(TIME_ZONE_COOKIE, ""))
        if name is None:
            timezone.deactivate()
        else:
            timezone.activate(zoneinfo.ZoneInfo(name))
        return self.get_response(request)
