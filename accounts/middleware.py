from __future__ import annotations

import zoneinfo
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from accounts.choices import time_zone_names

# Set by static/js/timezone.js from the browser, so anonymous visitors see local times too.
TIME_ZONE_COOKIE = "tz"


class TimezoneMiddleware:
    """Render times in the viewer's zone: their account's, else their browser's, else UTC."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        name = request.COOKIES.get(TIME_ZONE_COOKIE, "")
        if request.user.is_authenticated:
            name = request.user.time_zone
        if name in time_zone_names():
            timezone.activate(zoneinfo.ZoneInfo(name))
        else:
            timezone.deactivate()
        return self.get_response(request)
