"""The public pages, the error pages, the profile form and the viewer's time zone.

This module is also a test-only urlconf (see `urlpatterns` at the bottom): the product's own
URLs plus a few views that fail on purpose, so the error handlers that config/urls.py names
are exercised exactly as a real failing request would reach them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django.urls import URLPattern, URLResolver, include, path, reverse
from django.utils import timezone

import config.urls
from accounts.models import ExpertProfile, ExpertStatus, User
from accounts.tests.factories import ExpertProfileFactory, StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from config import errors

pytestmark = pytest.mark.django_db

TEST_URLS = "accounts.tests.test_pages"


@pytest.fixture(autouse=True)
def _utc_after_each_test() -> Iterator[None]:
    # The time zone middleware activates the viewer's zone for the rest of the thread; a
    # later test must not inherit Tokyo from this one.
    yield
    timezone.deactivate()


def _nav(html: str) -> str:
    start = html.index('<nav class="nav"')
    return html[start : html.index("</nav>", start)]


def _footer(html: str) -> str:
    start = html.index('<footer class="site-footer">')
    return html[start : html.index("</footer>", start)]


def _approved(**kwargs: object) -> ExpertProfile:
    return ExpertProfileFactory.create(
        status=ExpertStatus.APPROVED, decided_at=timezone.now(), **kwargs
    )


def _pending(**kwargs: object) -> ExpertProfile:
    return ExpertProfileFactory.create(status=ExpertStatus.PENDING, **kwargs)


def _directory_slugs(client: Client, **params: str) -> set[str]:
    response = client.get(reverse("accounts:expert_directory"), params)
    assert response.status_code == 200
    return {profile.slug for profile in response.context["page"].object_list}


# --- Home page and navigation --------------------------------------------------------------


def test_home_page_invites_an_anonymous_visitor_to_log_in_or_sign_up(client: Client) -> None:
    response = client.get(reverse("home"))
    assert response.status_code == 200
    nav = _nav(response.content.decode())
    assert "Log in" in nav
    assert "Sign up" in nav
    assert "Log out" not in nav
    assert "Become an expert" not in nav
    assert "Staff admin" not in nav


def test_home_page_offers_a_user_without_expert_profile_to_become_one(client: Client) -> None:
    client.force_login(UserFactory.create())
    response = client.get(reverse("home"))
    assert response.status_code == 200
    nav = _nav(response.content.decode())
    assert "Become an expert" in nav
    assert "Expert profile" not in nav
    assert "Log out" in nav
    assert "Log in" not in nav
    assert "Sign up" not in nav
    assert "Staff admin" not in nav


def test_home_page_links_an_expert_to_their_expert_profile(client: Client) -> None:
    profile = _pending()
    client.force_login(profile.user)
    nav = _nav(client.get(reverse("home")).content.decode())
    assert "Expert profile" in nav
    assert "Become an expert" not in nav
    assert "Staff admin" not in nav


def test_home_page_shows_the_staff_admin_link_to_staff_only(client: Client) -> None:
    client.force_login(StaffFactory.create())
    nav = _nav(client.get(reverse("home")).content.decode())
    assert "Staff admin" in nav
    assert reverse("admin:index") in nav


def test_home_page_features_approved_experts_only(client: Client) -> None:
    shown = _approved(user=UserFactory.create(display_name="Grace Hopper"))
    _pending(user=UserFactory.create(display_name="Pending Pete"))
    html = client.get(reverse("home")).content.decode()
    assert reverse("accounts:expert_detail", args=[shown.slug]) in html
    assert "Pending Pete" not in html


# --- Expert directory ----------------------------------------------------------------------


def test_directory_lists_only_approved_experts_of_active_users(client: Client) -> None:
    approved = _approved()
    _pending()
    ExpertProfileFactory.create(status=ExpertStatus.REJECTED, decision_reason="Too little detail.")
    _approved(user=UserFactory.create(is_active=False))
    assert _directory_slugs(client) == {approved.slug}


def test_directory_search_matches_name_headline_and_bio_ignoring_case(client: Client) -> None:
    by_name = _approved(user=UserFactory.create(display_name="Ada Lovelace"), headline="Analytics")
    by_headline = _approved(headline="PostgreSQL tuning for busy shops")
    by_bio = _approved(headline="Databases", bio="I have run PostgreSQL since version 7.")
    unrelated = _approved(headline="Tax advice", bio="Cross-border tax for freelancers.")

    assert _directory_slugs(client, q="ADA love") == {by_name.slug}
    assert _directory_slugs(client, q="postgresql") == {by_headline.slug, by_bio.slug}
    assert _directory_slugs(client, q="  TAX  ") == {unrelated.slug}
    assert _directory_slugs(client, q="nobody-matches-this") == set()


def test_directory_search_without_a_match_says_so(client: Client) -> None:
    _approved()
    response = client.get(reverse("accounts:expert_directory"), {"q": "nobody-matches-this"})
    assert "No expert matches that search." in response.content.decode()


def test_directory_filters_by_language(client: Client) -> None:
    german = _approved(languages=["de", "en"])
    english = _approved(languages=["en"])
    french = _approved(languages=["fr"])

    assert _directory_slugs(client, language="de") == {german.slug}
    assert _directory_slugs(client, language="en") == {german.slug, english.slug}
    assert _directory_slugs(client, language="fr") == {french.slug}


def test_directory_ignores_an_unknown_language(client: Client) -> None:
    one = _approved(languages=["de"])
    two = _approved(languages=["en"])
    response = client.get(reverse("accounts:expert_directory"), {"language": "klingon"})
    assert response.status_code == 200
    assert response.context["language"] == ""
    assert {p.slug for p in response.context["page"].object_list} == {one.slug, two.slug}


def test_directory_page_beyond_the_last_shows_the_last_page(client: Client) -> None:
    for _ in range(25):
        _approved()
    response = client.get(reverse("accounts:expert_directory"), {"page": "999"})
    assert response.status_code == 200
    page = response.context["page"]
    assert page.number == 2
    assert len(page.object_list) == 1
    assert "Page 2 of 2" in response.content.decode()


def test_directory_page_that_is_not_a_number_shows_the_first_page(client: Client) -> None:
    _approved()
    response = client.get(reverse("accounts:expert_directory"), {"page": "last"})
    assert response.status_code == 200
    assert response.context["page"].number == 1


# --- Expert detail -------------------------------------------------------------------------


def test_approved_profile_is_public(client: Client) -> None:
    profile = _approved(headline="Kubernetes cost reviews", languages=["de"])
    url = reverse("accounts:expert_detail", args=[profile.slug])

    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert profile.user.display_name in html
    assert "Kubernetes cost reviews" in html
    assert "German" in html
    assert "not public" not in html

    client.force_login(UserFactory.create())
    assert client.get(url).status_code == 200


def test_pending_profile_is_hidden_from_anonymous_visitors(client: Client) -> None:
    profile = _pending()
    response = client.get(reverse("accounts:expert_detail", args=[profile.slug]))
    assert response.status_code == 404
    assert "There is nothing at this address" in response.content.decode()


def test_pending_profile_is_hidden_from_other_users(client: Client) -> None:
    profile = _pending()
    client.force_login(UserFactory.create())
    response = client.get(reverse("accounts:expert_detail", args=[profile.slug]))
    assert response.status_code == 404


def test_rejected_profile_is_hidden_from_other_users(client: Client) -> None:
    profile = ExpertProfileFactory.create(
        status=ExpertStatus.REJECTED, decision_reason="Too little detail."
    )
    client.force_login(UserFactory.create())
    response = client.get(reverse("accounts:expert_detail", args=[profile.slug]))
    assert response.status_code == 404


def test_pending_profile_is_a_preview_for_its_owner(client: Client) -> None:
    profile = _pending()
    client.force_login(profile.user)
    response = client.get(reverse("accounts:expert_detail", args=[profile.slug]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "This profile is not public" in html
    assert "Only you and Parley staff can see it." in html
    assert "Edit your expert profile" in html


def test_pending_profile_is_hidden_from_staff_outside_a_two_factor_session(
    client: Client,
) -> None:
    profile = _pending()
    client.force_login(StaffFactory.create())
    response = client.get(reverse("accounts:expert_detail", args=[profile.slug]))
    assert response.status_code == 404


def test_pending_profile_is_visible_to_staff(client: Client) -> None:
    profile = _pending()
    staff = StaffFactory.create()
    login_with_mfa(client, staff, totp_enable(staff))
    response = client.get(reverse("accounts:expert_detail", args=[profile.slug]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "This profile is not public" in html
    assert "Only you and Parley staff can see it." not in html


def test_profile_of_a_deactivated_user_is_gone(client: Client) -> None:
    profile = _approved(user=UserFactory.create(is_active=False))
    response = client.get(reverse("accounts:expert_detail", args=[profile.slug]))
    assert response.status_code == 404


def test_unknown_expert_slug_gets_our_not_found_page(client: Client) -> None:
    response = client.get(reverse("accounts:expert_detail", args=["nobody-by-this-name"]))
    assert response.status_code == 404
    html = response.content.decode()
    assert "There is nothing at this address" in html
    assert reverse("accounts:expert_directory") in html


# --- Error pages ---------------------------------------------------------------------------


def test_server_error_handler_renders_our_page_with_status_500(rf: RequestFactory) -> None:
    response = errors.server_error(rf.get("/anywhere/"))
    assert response.status_code == 500
    assert "Something went wrong on our side" in response.content.decode()


@pytest.mark.urls(TEST_URLS)
def test_view_that_raises_gets_our_500_page(client: Client) -> None:
    client.raise_request_exception = False
    response = client.get("/test-only/crash/")
    assert response.status_code == 500
    html = response.content.decode()
    assert "Something went wrong on our side" in html
    assert "RuntimeError" not in html


@pytest.mark.urls(TEST_URLS)
def test_a_database_restarting_under_a_view_is_a_503_that_says_to_try_again(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    client.raise_request_exception = False
    response = client.get("/test-only/database-down/")
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    html = response.content.decode()
    assert "Back in a moment" in html and "try again in a few seconds" in html
    assert "OperationalError" not in html
    response = client.get("/test-only/database-down/", HTTP_ACCEPT="application/json")
    assert response.status_code == 503
    assert "try again in a few seconds" in response.json()["error"]
    # Logged as what it is, not as an unhandled error.
    assert "Internal Server Error" not in caplog.text
    assert "Service Unavailable: /test-only/database-down/" in caplog.text


def test_a_database_restarting_under_a_middleware_is_a_503_too(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    user = UserFactory.create()
    client.force_login(user)
    client.raise_request_exception = False

    def restarting(request: HttpRequest) -> User:
        raise OperationalError("the database system is starting up")

    # The time-zone middleware reads the user before any view runs.
    monkeypatch.setattr("django.contrib.auth.middleware.auth.get_user", restarting)
    response = client.get("/")
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    assert "Back in a moment" in response.content.decode()
    assert "Internal Server Error" not in caplog.text


@pytest.mark.urls(TEST_URLS)
def test_permission_denied_page_gives_the_reason(client: Client) -> None:
    response = client.get("/test-only/forbidden-with-reason/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "You do not have access to this page" in html
    assert "Only the people booked into this room can join it." in html
    # An anonymous visitor is offered a login that brings them back.
    assert reverse("account_login") + "?next=/test-only/forbidden-with-reason/" in html


@pytest.mark.urls(TEST_URLS)
def test_permission_denied_without_reason_says_the_account_is_not_allowed(
    client: Client,
) -> None:
    user = UserFactory.create()
    client.force_login(user)
    response = client.get("/test-only/forbidden/")
    assert response.status_code == 403
    html = response.content.decode()
    assert "Your account is not allowed to see this page." in html
    assert f"You are signed in as {user.email}" in html


@pytest.mark.urls(TEST_URLS)
def test_bad_request_gets_our_400_page(client: Client) -> None:
    response = client.get("/test-only/suspicious/")
    assert response.status_code == 400
    assert "We could not understand that request" in response.content.decode()


def test_post_without_csrf_token_gets_the_form_expired_page() -> None:
    client = Client(enforce_csrf_checks=True)
    response = client.post(
        reverse("account_login"), {"login": "someone@example.test", "password": "whatever"}
    )
    assert response.status_code == 403
    assert "This form expired" in response.content.decode()


# --- Profile edit --------------------------------------------------------------------------


def test_profile_page_needs_a_login(client: Client) -> None:
    response = client.get(reverse("accounts:profile"))
    assert response.status_code == 302
    assert response["Location"] == reverse("account_login") + "?next=/me/profile/"


def test_profile_page_shows_the_current_values(client: Client) -> None:
    user = UserFactory.create(display_name="Ada Lovelace", time_zone="Asia/Tokyo")
    client.force_login(user)
    response = client.get(reverse("accounts:profile"))
    assert response.status_code == 200
    assert response.context["form"].initial == {
        "display_name": "Ada Lovelace",
        "time_zone": "Asia/Tokyo",
        "booking_reminders": True,
    }


def test_profile_edit_saves_name_and_time_zone(client: Client) -> None:
    user = UserFactory.create(display_name="Old Name", time_zone="Europe/Berlin")
    client.force_login(user)
    response = client.post(
        reverse("accounts:profile"),
        {"display_name": "  Ada Lovelace  ", "time_zone": "Asia/Tokyo"},
    )
    assert response.status_code == 302
    assert response["Location"] == reverse("accounts:profile")
    user.refresh_from_db()
    assert user.display_name == "Ada Lovelace"
    assert user.time_zone == "Asia/Tokyo"
    assert "Your profile is saved." in client.get(reverse("accounts:profile")).content.decode()


@pytest.mark.parametrize(
    ("display_name", "time_zone", "field", "message"),
    [
        ("", "Asia/Tokyo", "display_name", "This field is required."),
        ("   ", "Asia/Tokyo", "display_name", "This field is required."),
        ("x" * 81, "Asia/Tokyo", "display_name", "at most 80 characters (it has 81)"),
        ("Ada Lovelace", "Mars/Olympus", "time_zone", "Mars/Olympus is not one of the"),
        ("Ada Lovelace", "", "time_zone", "This field is required."),
    ],
    ids=["blank-name", "whitespace-name", "long-name", "unknown-zone", "no-zone"],
)
def test_profile_edit_with_bad_input_explains_and_changes_nothing(
    client: Client, display_name: str, time_zone: str, field: str, message: str
) -> None:
    user = UserFactory.create(display_name="Old Name", time_zone="Europe/Berlin")
    client.force_login(user)
    response = client.post(
        reverse("accounts:profile"), {"display_name": display_name, "time_zone": time_zone}
    )
    assert response.status_code == 200
    errors_of_field = response.context["form"].errors[field]
    assert any(message in error for error in errors_of_field), errors_of_field
    assert message in response.content.decode()
    assert "Your profile is saved." not in response.content.decode()
    reloaded = User.objects.get(pk=user.pk)
    assert (reloaded.display_name, reloaded.time_zone) == ("Old Name", "Europe/Berlin")


# --- Viewer's time zone --------------------------------------------------------------------


def test_signed_in_user_sees_times_in_their_own_zone(client: Client) -> None:
    user = UserFactory.create(time_zone="Asia/Tokyo")
    _pending(user=user, submitted_at=datetime(2030, 1, 15, 12, 0, tzinfo=UTC))
    client.force_login(user)
    html = client.get(reverse("accounts:expert_apply")).content.decode()
    # 12:00 UTC is 21:00 in Tokyo.
    assert "sent 15 Jan 2030, 21:00" in html


@pytest.mark.urls(TEST_URLS)
def test_signed_in_users_zone_wins_over_the_browser_cookie(client: Client) -> None:
    client.force_login(UserFactory.create(time_zone="Asia/Tokyo"))
    client.cookies["tz"] = "America/New_York"
    assert client.get("/test-only/zone/").content.decode() == "Asia/Tokyo"


@pytest.mark.urls(TEST_URLS)
def test_anonymous_visitor_gets_the_zone_from_the_browser_cookie(client: Client) -> None:
    client.cookies["tz"] = "America/New_York"
    assert client.get("/test-only/zone/").content.decode() == "America/New_York"


@pytest.mark.urls(TEST_URLS)
def test_invalid_zone_cookie_falls_back_to_utc(client: Client) -> None:
    client.cookies["tz"] = "Mars/Olympus"
    assert client.get("/test-only/zone/").content.decode() == "UTC"


def test_footer_names_the_signed_in_users_time_zone(client: Client) -> None:
    client.force_login(UserFactory.create(time_zone="Asia/Tokyo"))
    footer = _footer(client.get(reverse("home")).content.decode())
    assert "Asia/Tokyo" in footer


def test_footer_names_the_zone_from_the_browser_cookie(client: Client) -> None:
    client.cookies["tz"] = "America/New_York"
    footer = _footer(client.get(reverse("home")).content.decode())
    assert "America/New_York" in footer


def test_footer_says_utc_for_an_invalid_zone_cookie(client: Client) -> None:
    client.cookies["tz"] = "Mars/Olympus"
    footer = _footer(client.get(reverse("home")).content.decode())
    assert "Times are shown in" in footer
    assert "UTC" in footer
    assert "Mars/Olympus" not in footer


# --- Test-only urlconf ---------------------------------------------------------------------


def _crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("a bug in a view")


def _database_down(request: HttpRequest) -> HttpResponse:
    raise OperationalError("terminating connection due to administrator command")


def _forbidden_with_reason(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied("Only the people booked into this room can join it.")


def _forbidden(request: HttpRequest) -> HttpResponse:
    raise PermissionDenied


def _suspicious(request: HttpRequest) -> HttpResponse:
    raise SuspiciousOperation("malformed input")


def _current_zone(request: HttpRequest) -> HttpResponse:
    return HttpResponse(timezone.get_current_timezone_name(), content_type="text/plain")


urlpatterns: list[URLPattern | URLResolver] = [
    path("test-only/crash/", _crash),
    path("test-only/database-down/", _database_down),
    path("test-only/forbidden-with-reason/", _forbidden_with_reason),
    path("test-only/forbidden/", _forbidden),
    path("test-only/suspicious/", _suspicious),
    path("test-only/zone/", _current_zone),
    path("", include("config.urls")),
]

# The product's handlers, as config/urls.py names them.
handler400 = config.urls.handler400
handler403 = config.urls.handler403
handler404 = config.urls.handler404
handler500 = config.urls.handler500
