"""What every page carries: the icon, and the one sentence naming the zone times are shown in."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _sentence(html: str, element_id: str) -> str:
    match = re.search(rf'<span id="{element_id}">(.*?)</span>', html, flags=re.S)
    assert match is not None, element_id
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def test_every_page_links_the_svg_icon(client: Client) -> None:
    html = client.get(reverse("home")).content.decode()
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in html


def test_favicon_ico_leads_to_the_svg_icon(client: Client) -> None:
    response = client.get("/favicon.ico")
    assert (response.status_code, response["Location"]) == (302, "/static/favicon.svg")


@pytest.mark.parametrize(
    ("cookie", "said"),
    [
        (None, "Times are shown in UTC until your browser tells us your time zone."),
        ("Mars/Olympus", "Times are shown in UTC until your browser tells us your time zone."),
        (
            "America/Los_Angeles",
            "Times are shown in America/Los_Angeles, your browser's time zone.",
        ),
    ],
)
def test_the_home_page_promises_what_the_footer_says_to_a_visitor(
    client: Client, cookie: str | None, said: str
) -> None:
    if cookie is not None:
        client.cookies["tz"] = cookie
    html = client.get(reverse("home")).content.decode()
    assert _sentence(html, "time-zone-promise") == _sentence(html, "time-zone-line") == said


def test_the_home_page_promises_what_the_footer_says_to_a_signed_in_person(
    client: Client,
) -> None:
    client.force_login(UserFactory.create(time_zone="Asia/Tokyo"))
    html = client.get(reverse("home")).content.decode()
    said = "Times are shown in Asia/Tokyo, your account's time zone."
    assert _sentence(html, "time-zone-promise") == _sentence(html, "time-zone-line") == said
    assert f'href="{reverse("accounts:profile")}"' in html
