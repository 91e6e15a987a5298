"""Rate limits on the POSTs a person can repeat to harm others: booking (calendar squatting),
reports, blocks and disputes (flooding staff). Per signed-in user and per client address, with
django-ratelimit; the counts live in the cache and a cache that is down lets requests through
(RATELIMIT_FAIL_OPEN, config/cache.py): limits are a brake, not a lock.

The client address is allauth's (`client_ip`): behind a load balancer it reads the trusted
proxy settings (TRUSTED_PROXY_COUNT or TRUSTED_CLIENT_IP_HEADER, docs/ARCHITECTURE.md), so the
limits and the login limits see the same person, and a client cannot pick its own address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, cast

from allauth.account.adapter import get_adapter
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django_ratelimit.decorators import ratelimit

View = TypeVar("View", bound=Callable[..., HttpResponse])


def client_ip(group: str, request: HttpRequest) -> str:
    try:
        return str(get_adapter(request).get_client_ip(request))
    except PermissionDenied:  # allauth's answer when no address can be found
        return "unknown"


def _user_key(group: str, request: HttpRequest) -> str:
    user = request.user
    return f"user:{user.pk}" if user.is_authenticated else f"ip:{client_ip(group, request)}"


def _rate(group: str, request: HttpRequest) -> str | None:
    rate: str | None = settings.POST_RATE_LIMITS.get(group)
    return rate


def post_rate_limited(action: str) -> Callable[[View], View]:
    """Limit the POSTs of one action per user (POST_RATE_LIMITS["<action>:user"]) and per
    client address ("<action>:ip"). Put it below @login_required."""

    def decorate(view: View) -> View:
        limited = ratelimit(group=f"{action}:ip", key=client_ip, rate=_rate, method="POST")(view)
        return cast(
            View,
            ratelimit(group=f"{action}:user", key=_user_key, rate=_rate, method="POST")(limited),
        )

    return decorate
