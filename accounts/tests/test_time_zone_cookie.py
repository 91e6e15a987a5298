"""The `tz` cookie that static/js/timezone.js writes: the zone a visitor who is not signed in
sees times in. Read as written, and as older scripts percent-encoded it; anything that is not
a zone gets UTC, never an error; a signed-in person's account zone wins."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import timezone

from accounts.middleware import TIME_ZONE_COOKIE, TimezoneMiddleware, time_zone_from_cookie
from accounts.tests.factories import UserFactory

LOS_ANGELES = "America/Los_Angeles"


@pytest.mark.parametrize(
    ("value", "zone"),
    [
        ("America/Los_Angeles", LOS_ANGELES),
        ("America%2FLos_Angeles", LOS_ANGELES),
        ("America%2fLos_Angeles", LOS_ANGELES),
        ('"America/Los_Angeles"', LOS_ANGELES),
        ("America/Argentina/Buenos_Aires", "America/Argentina/Buenos_Aires"),
        ("America%2FArgentina%2FBuenos_Aires", "America/Argentina/Buenos_Aires"),
        ("Etc/GMT%2B5", "Etc/GMT+5"),
        ("UTC", "UTC"),
        ("", None),
        ("Mars/Olympus_Mons", None),
        ("america/los_angeles", None),
        ("America%2FLos_Angeles%00", None),
        ("%E0%A4%A", None),
        ("../../etc/passwd", None),
        ("Europe/Berlin" * 20, None),
    ],
)
def test_the_cookie_names_a_zone_or_none(value: str, zone: str | None) -> None:
    assert time_zone_from_cookie(value) == zone


def _zone_seen(request: HttpRequest) -> str:
    seen: list[str] = []

    def view(request: HttpRequest) -> HttpResponse:
        seen.append(timezone.get_current_timezone_name())
        return HttpResponse()

    TimezoneMiddleware(view)(request)
    return seen[0]


def _anonymous(cookie: str | None) -> HttpRequest:
    request = RequestFactory().get("/")
    if cookie is not None:
        request.COOKIES[TIME_ZONE_COOKIE] = cookie
    request.user = AnonymousUser()
    return request


@pytest.mark.parametrize(
    ("cookie", "zone"),
    [
        ("America%2FLos_Angeles", LOS_ANGELES),
        ("Asia/Kolkata", "Asia/Kolkata"),
        (None, "UTC"),
        ("Not/A_Zone", "UTC"),
        ("<script>", "UTC"),
    ],
)
def test_a_visitor_sees_the_zone_of_the_cookie_or_utc(cookie: str | None, zone: str) -> None:
    timezone.activate("Europe/Berlin")  # what the previous request of this thread left
    try:
        assert _zone_seen(_anonymous(cookie)) == zone
    finally:
        timezone.deactivate()


@pytest.mark.django_db
def test_a_signed_in_person_sees_their_account_zone_whatever_the_cookie() -> None:
    request = RequestFactory().get("/")
    request.COOKIES[TIME_ZONE_COOKIE] = "America%2FLos_Angeles"
    request.user = UserFactory.create(time_zone="Asia/Tokyo")
    assert _zone_seen(request) == "Asia/Tokyo"


@pytest.mark.django_db
def test_a_visitors_page_names_the_zone_it_was_rendered_in_for_the_script() -> None:
    """timezone.js reloads a visitor's first page once when this is not the browser's zone."""
    visitor = Client()
    visitor.cookies[TIME_ZONE_COOKIE] = "America%2FLos_Angeles"
    page = visitor.get(reverse("home")).content.decode()
    assert f'<html lang="en" data-visitor-time-zone="{LOS_ANGELES}">' in page

    first_visit = Client().get(reverse("home")).content.decode()
    assert '<html lang="en" data-visitor-time-zone="UTC">' in first_visit

    wrong = Client()
    wrong.cookies[TIME_ZONE_COOKIE] = "Nowhere/Land"
    response = wrong.get(reverse("home"))
    assert response.status_code == 200
    assert '<html lang="en" data-visitor-time-zone="UTC">' in response.content.decode()


@pytest.mark.django_db
def test_a_signed_in_page_carries_no_visitor_zone() -> None:
    """Their zone is the account's: a reload would change nothing."""
    signed_in = Client()
    signed_in.force_login(UserFactory.create(time_zone="Asia/Tokyo"))
    page = signed_in.get(reverse("home")).content.decode()
    assert "data-visitor-time-zone" not in page
    assert '<html lang="en">' in page
