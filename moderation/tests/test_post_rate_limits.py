"""Rate limits on the POSTs that harm others when repeated (issue 16, security): booking
(calendar squatting), reports, blocks and disputes; per user and per client address; a clear
429; and a cache that is down lets requests through rather than failing them."""

from __future__ import annotations

import socket

import pytest
from django.test import Client
from django.urls import reverse
from pytest_django import Settings

from accounts.models import User
from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db

# No such room or offering: the limit is counted before the view looks, so a refusal (404)
# counts like a success, and these tests need no session.
ACTIONS = {
    "booking": reverse("rooms:offering_book", args=[999_999]),
    "booking-group-seat": reverse("rooms:group_seat_take", args=[999_999]),
    "report": reverse("moderation:report", args=[999_999]),
    "block": reverse("moderation:block", args=[999_999]),
    "dispute": reverse("moderation:dispute", args=[999_999]),
}


def _limits(settings: Settings, *, user: str = "1000/h", ip: str = "1000/h") -> None:
    settings.POST_RATE_LIMITS = {
        f"{action}:{per}": rate
        for action in ("booking", "report", "block", "dispute")
        for per, rate in (("user", user), ("ip", ip))
    }


def _signed_in(user: User, address: str = "203.0.113.7") -> Client:
    client = Client(REMOTE_ADDR=address)
    client.force_login(user)
    return client


@pytest.mark.parametrize("action", list(ACTIONS))
def test_one_user_repeating_a_post_gets_429_with_what_to_do(
    settings: Settings, action: str
) -> None:
    _limits(settings, user="3/h")
    client = _signed_in(UserFactory.create())

    answers = [client.post(ACTIONS[action]).status_code for _ in range(3)]
    assert 429 not in answers

    page = client.post(ACTIONS[action])
    assert page.status_code == 429
    assert b"too many times in a short while" in page.content
    fetched = client.post(ACTIONS[action], headers={"Accept": "application/json"})
    assert fetched.status_code == 429
    assert "Wait a few minutes" in fetched.json()["error"]
    # Another person is not held back by the first one's count.
    assert _signed_in(UserFactory.create(), "198.51.100.9").post(ACTIONS[action]).status_code != 429


def test_many_accounts_from_one_address_are_limited_together(settings: Settings) -> None:
    _limits(settings, ip="4/h")
    answers = [
        _signed_in(UserFactory.create(), "203.0.113.7").post(ACTIONS["report"]).status_code
        for _ in range(5)
    ]
    assert answers[:4].count(429) == 0 and answers[4] == 429
    assert (
        _signed_in(UserFactory.create(), "198.51.100.9").post(ACTIONS["report"]).status_code != 429
    )


def test_a_get_of_the_booking_page_is_not_counted(settings: Settings) -> None:
    _limits(settings, user="1/h", ip="1/h")
    client = _signed_in(UserFactory.create())
    assert [client.get(ACTIONS["booking"]).status_code for _ in range(3)] == [404] * 3


def test_limits_fail_open_when_the_cache_is_down(settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{closed}/0"}
    }
    _limits(settings, user="1/h", ip="1/h")
    client = _signed_in(UserFactory.create())
    assert [client.post(ACTIONS["report"]).status_code for _ in range(3)] == [404] * 3
