"""Ratings where people see them, in real Chromium against the whole deployment: the average
and count on the expert's card and page, the recent written reviews, a review staff hide in
admin leaving both, the expert's own list; and the signup form's password rules read out as
the password field's description."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from rooms.tests.browser.support import BASE_URL, Contexts, Person, log_in_with_form
from rooms.tests.e2e_services import Deployment


@pytest.fixture
def rated(deployment: Deployment) -> dict[str, int | str]:
    """An expert with a unique name, rated 5 ("Anna Kowalska", written), 4 (written) and 5 (no
    comment): 4.7 from 3 ratings; and a hidden 1 that counts nowhere."""
    from accounts.tests.factories import UserFactory
    from rooms.tests.factories import expert_create
    from rooms.tests.ratings_seed import rating_add

    name = f"Rita {uuid.uuid4().hex[:8]}"
    expert = expert_create(display_name=name)
    anna = UserFactory.create(display_name="Anna Kowalska")
    newest = rating_add(
        expert, 5, "Clear answers, and she found our leak.", client=anna, days_ago=1
    )
    rating_add(expert, 4, "Good session, ran a little long.", days_ago=3)
    rating_add(expert, 5, "", days_ago=5)
    rating_add(expert, 1, "Spam: visit my shop", hidden=True, days_ago=2)
    return {
        "name": name,
        "slug": expert.expert_profile.slug,
        "expert": expert.pk,
        "newest": newest.pk,
    }


def _expert_page(page: Page, rated: dict[str, int | str]) -> None:
    page.goto(f"/experts/{rated['slug']}/")


def test_the_card_and_the_experts_page_show_the_average_the_count_and_recent_reviews(
    contexts: Contexts, rated: dict[str, int | str]
) -> None:
    page = contexts("visitor").new_page()
    page.goto(f"/experts/?q={rated['name']}")

    # The cards' headings come under the page's, one level down (no h1 → h3 skip).
    expect(page.get_by_role("heading", level=2)).to_have_text("1 expert found")
    card = page.locator(".card", has_text=str(rated["name"]))
    expect(card.locator(".rating")).to_have_text(re.compile(r"4\.7 out of 5 from 3 ratings"))
    expect(card.locator(".rating")).to_have_attribute("data-rating-average", "4.7")

    card.get_by_role("link", name=str(rated["name"])).click()
    expect(page.locator("#rating-summary")).to_have_text(
        re.compile(r"4\.7 out of 5 from 3 ratings")
    )
    reviews = page.locator("#reviews .review")
    expect(reviews).to_have_count(2)  # the written ones; the hidden one is not there
    expect(reviews.nth(0)).to_contain_text("Clear answers, and she found our leak.")
    expect(reviews.nth(0)).to_contain_text("Anna K.")
    expect(reviews.nth(0)).to_contain_text("5 out of 5")
    expect(reviews.nth(1)).to_contain_text("Good session, ran a little long.")
    expect(page.locator("#reviews")).not_to_contain_text("Spam")
    expect(page.locator("#reviews")).not_to_contain_text("Kowalska")


def test_a_review_staff_hide_in_admin_leaves_the_page_and_the_average(
    contexts: Contexts, rated: dict[str, int | str]
) -> None:
    from accounts.tests.factories import PASSWORD, StaffFactory, totp_enable
    from accounts.tests.helpers import totp_code
    from rooms.models import RoomEvent

    visitor = contexts("visitor").new_page()
    _expert_page(visitor, rated)
    expect(visitor.locator("#reviews")).to_contain_text("Clear answers")

    staff_user = StaffFactory.create()
    secret = totp_enable(staff_user)
    staff = contexts("staff").new_page()
    staff.goto("/accounts/login/?next=/admin/rooms/rating/")
    log_in_with_form(staff, Person(staff_user.pk, staff_user.email, PASSWORD))
    staff.locator('input[name="code"]').fill(totp_code(secret))
    staff.locator('input[name="code"]').press("Enter")
    expect(staff).to_have_url(re.compile(r"/admin/rooms/rating/"))

    staff.locator(f'input[name="_selected_action"][value="{rated["newest"]}"]').check()
    staff.locator('select[name="action"]').select_option("hide")
    staff.locator('button[name="index"]').click()
    staff.locator('textarea[name="reason"]').fill("Names a colleague of the expert.")
    staff.get_by_role("button", name="Hide").or_(staff.locator('input[value="Hide"]')).click()
    expect(staff.locator(".messagelist")).to_contain_text(f"Rating #{rated['newest']}: hidden.")

    visitor.reload()
    expect(visitor.locator("#rating-summary")).to_have_text(
        re.compile(r"4\.5 out of 5 from 2 ratings")
    )
    expect(visitor.locator("#reviews .review")).to_have_count(1)
    expect(visitor.locator("#reviews")).not_to_contain_text("Clear answers")
    event = RoomEvent.objects.get(kind="rating_hidden", data__rating=rated["newest"])
    assert (event.actor_id, event.data["reason"]) == (
        staff_user.pk,
        "Names a colleague of the expert.",
    )


def test_the_expert_sees_their_own_ratings_on_their_page(
    contexts: Contexts, rated: dict[str, int | str]
) -> None:
    from accounts.models import User
    from accounts.tests.factories import PASSWORD

    expert = User.objects.get(pk=rated["expert"])
    page = contexts("expert", Person(expert.pk, expert.email, PASSWORD)).new_page()
    page.goto("/me/expert/")
    page.get_by_role("link", name="See your public profile").click()

    own = page.locator("#your-ratings")
    expect(own).to_contain_text("Clients rated you 4.7 out of 5 from 3 ratings")
    expect(own.locator(".review")).to_have_count(3)  # the one without a comment too
    expect(own).to_contain_text("1 rating hidden by Parley staff")
    expect(own).not_to_contain_text("Spam")


def test_the_signup_forms_password_rules_are_the_password_fields_description(
    contexts: Contexts, deployment: Deployment
) -> None:
    page = contexts("visitor").new_page()
    page.goto("/accounts/signup/")

    password = page.get_by_label("Password", exact=False).first
    expect(password).to_have_attribute("name", "password1")
    expect(password).to_have_accessible_description(
        re.compile(r"at least 8 characters.*commonly used password", re.S)
    )
    # The rules are a list inside the described element, not spilled out of a paragraph.
    described = page.locator("#" + str(password.get_attribute("aria-describedby")))
    expect(described.locator("li")).to_have_count(4)
    assert page.url.startswith(BASE_URL)
