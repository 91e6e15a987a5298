"""Ratings as people see them: the average and count on the expert's card and page, the recent
written reviews, the expert's own list, and staff hiding one (with who, when and why)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from rooms.errors import RoomsError
from rooms.models import Rating, RoomEvent
from rooms.ratings import (
    NO_RATINGS,
    RatingSummary,
    rating_summaries,
    rating_summary,
    ratings_own,
    reviewer_name,
    reviews_recent,
)
from rooms.services.feedback import rating_give, rating_hide, rating_unhide
from rooms.tests.factories import expert_create, room_closed_after_a_call, seat_booked
from rooms.tests.ratings_seed import rating_add

pytestmark = pytest.mark.django_db


@pytest.fixture
def expert() -> User:
    return expert_create(display_name="Erin Expert")


@pytest.fixture
def staff() -> User:
    return StaffFactory.create()


def _detail_url(expert: User) -> str:
    return reverse("accounts:expert_detail", args=[expert.expert_profile.slug])


# --- the average and the count ---------------------------------------------------------------


def test_the_summary_is_the_average_to_one_decimal_and_the_count_of_visible_ratings(
    expert: User,
) -> None:
    for stars in (4, 4, 5, 4):
        rating_add(expert, stars)
    rating_add(expert, 1, "Rude", hidden=True)

    summary = rating_summary(expert)

    # 17 / 4 = 4.25, rounded half up; the hidden 1 counts nowhere.
    assert summary == RatingSummary(count=4, average=Decimal("4.3"))
    assert summary.label == "4.3 out of 5 from 4 ratings"


def test_an_expert_without_ratings_has_none_and_says_so(expert: User) -> None:
    assert rating_summary(expert) == NO_RATINGS
    assert NO_RATINGS.label == "No ratings yet"
    rating_add(expert, 5)
    assert rating_summary(expert).label == "5.0 out of 5 from 1 rating"


def test_summaries_of_many_experts_take_one_query() -> None:
    experts = [expert_create() for _ in range(4)]
    rating_add(experts[0], 5)
    rating_add(experts[0], 3)
    rating_add(experts[1], 2)

    with CaptureQueriesContext(connection) as queries:
        summaries = rating_summaries(expert.pk for expert in experts)

    assert len(queries) == 1
    assert summaries[experts[0].pk] == RatingSummary(2, Decimal("4.0"))
    assert summaries[experts[1].pk] == RatingSummary(1, Decimal("2.0"))
    assert summaries[experts[2].pk] == NO_RATINGS


# --- reviews ---------------------------------------------------------------------------------


def test_recent_reviews_are_the_newest_written_visible_ones_with_first_name_and_initial(
    expert: User,
) -> None:
    anna = UserFactory.create(display_name="Anna Maria Kowalska")
    rating_add(expert, 5, "Oldest", days_ago=9)
    for day in range(1, 6):
        rating_add(expert, 4, f"Day {day}", days_ago=day, client=anna if day == 1 else None)
    rating_add(expert, 5, "", days_ago=0.5)  # stars only: no review to show
    rating_add(expert, 1, "Hidden", days_ago=0.1, hidden=True)

    reviews = reviews_recent(expert)

    assert [review.comment for review in reviews] == [f"Day {day}" for day in range(1, 6)]
    assert reviews[0].reviewer == "Anna K."


def test_a_reviewer_is_named_by_first_name_and_last_initial() -> None:
    assert reviewer_name("Anna Kowalska") == "Anna K."
    assert reviewer_name("Prince") == "Prince"
    assert reviewer_name("  ") == "A client"


def test_the_expert_sees_every_visible_rating_and_how_many_are_hidden(expert: User) -> None:
    rating_add(expert, 5, "")
    rating_add(expert, 3, "Fine")
    rating_add(expert, 1, "Abusive", hidden=True)

    own = ratings_own(expert)

    assert own.summary == RatingSummary(2, Decimal("4.0"))
    assert [(review.stars, review.comment) for review in own.ratings] == [(5, ""), (3, "Fine")]
    assert own.hidden_count == 1


# --- the pages -------------------------------------------------------------------------------


def _card(html: str, name: str) -> str:
    found = re.search(rf'<li class="card">(?:(?!</li>).)*{name}(?:(?!</li>).)*</li>', html, re.S)
    assert found, f"no card of {name}"
    return found.group(0)


def test_the_directory_shows_each_experts_average_and_count(expert: User) -> None:
    other = expert_create(display_name="Olga Other")
    rating_add(expert, 5)
    rating_add(expert, 4)
    rating_add(expert, 1, hidden=True)

    html = Client().get(reverse("accounts:expert_directory")).content.decode()

    assert "4.5 out of 5 from 2 ratings" in _card(html, "Erin Expert")
    assert 'data-rating-average="4.5"' in _card(html, "Erin Expert")
    assert "No ratings yet" in _card(html, "Olga Other")
    assert other.pk


def test_the_directory_takes_as_many_queries_for_many_experts_as_for_one() -> None:
    first = expert_create()
    rating_add(first, 5)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert Client().get(reverse("accounts:expert_directory")).status_code == 200
        return len(captured)

    alone = queries()
    for _ in range(5):
        rating_add(expert_create(), 4)
    assert queries() == alone


def test_the_directory_has_no_heading_level_skipped(expert: User) -> None:
    html = Client().get(reverse("accounts:expert_directory")).content.decode()
    levels = [int(level) for level in re.findall(r"<h([1-6])", html)]
    assert levels[:3] == [1, 2, 3]
    assert all(b - a <= 1 for a, b in zip(levels, levels[1:], strict=False))


def test_the_experts_page_shows_the_summary_and_recent_reviews(expert: User) -> None:
    rating_add(
        expert, 5, "Clear and <b>kind</b>", client=UserFactory.create(display_name="Bo Berg")
    )
    rating_add(expert, 3, "Hidden remark", hidden=True)

    html = Client().get(_detail_url(expert)).content.decode()

    assert "5.0 out of 5 from 1 rating" in html
    assert "Recent reviews" in html
    assert "Clear and &lt;b&gt;kind&lt;/b&gt;" in html
    assert "Bo B." in html
    assert "Hidden remark" not in html
    assert "Your ratings" not in html


def test_the_expert_sees_their_own_ratings_on_their_page(expert: User) -> None:
    rating_add(expert, 5, "")
    rating_add(expert, 2, "Late", hidden=True)
    client = Client()
    client.force_login(expert)

    html = client.get(_detail_url(expert)).content.decode()

    assert "Your ratings" in html
    assert "Clients rated you 5.0 out of 5 from 1 rating" in html
    assert "1 rating hidden by Parley staff" in html
    assert "Late" not in html


# --- staff hide one --------------------------------------------------------------------------


def test_hiding_a_rating_takes_it_out_and_records_who_when_and_why(
    expert: User, staff: User
) -> None:
    rating = rating_add(expert, 1, "Spam link")
    rating_add(expert, 5)

    rating_hide(rating.pk, staff, reason="  Advertises another site.  ")

    rating.refresh_from_db()
    assert rating.hidden
    assert rating_summary(expert) == RatingSummary(1, Decimal("5.0"))
    event = RoomEvent.objects.get(room=rating.room, kind="rating_hidden")
    assert event.actor == staff
    assert event.data == {
        "rating": rating.pk,
        "client": rating.client_id,
        "reason": "Advertises another site.",
    }

    rating_unhide(rating.pk, staff, reason="Link was the client's own blog.")

    rating.refresh_from_db()
    assert not rating.hidden
    assert rating_summary(expert) == RatingSummary(2, Decimal("3.0"))
    shown = RoomEvent.objects.get(room=rating.room, kind="rating_unhidden")
    assert (shown.actor, shown.data["reason"]) == (staff, "Link was the client's own blog.")


def test_hiding_is_refused_twice_without_a_reason_and_to_non_staff(
    expert: User, staff: User
) -> None:
    rating = rating_add(expert, 1, "Spam")
    with pytest.raises(RoomsError, match="Say why"):
        rating_hide(rating.pk, staff, reason="   ")
    with pytest.raises(RoomsError, match="Only Parley staff"):
        rating_hide(rating.pk, UserFactory.create(), reason="Spam")
    with pytest.raises(RoomsError, match="already shown"):
        rating_unhide(rating.pk, staff, reason="Nothing to undo")
    rating_hide(rating.pk, staff, reason="Spam")
    with pytest.raises(RoomsError, match="already hidden"):
        rating_hide(rating.pk, staff, reason="Again")
    assert RoomEvent.objects.filter(room=rating.room, kind="rating_hidden").count() == 1


def test_a_client_changing_a_hidden_rating_does_not_bring_it_back(staff: User) -> None:
    seat = seat_booked()
    room = room_closed_after_a_call(seat)
    rating = rating_give(room.pk, seat.client, stars=1, comment="Rude words")
    rating_hide(rating.pk, staff, reason="Abusive language.")

    rating_give(room.pk, seat.client, stars=2, comment="Still rude")

    rating.refresh_from_db()
    assert (rating.stars, rating.hidden) == (2, True)


def test_staff_hide_a_rating_in_admin_with_a_reason(expert: User, staff: User) -> None:
    rating = rating_add(expert, 1, "Spam")
    client = Client()
    login_with_mfa(client, staff, totp_enable(staff))
    url = reverse("admin:rooms_rating_changelist")
    chosen = {"action": "hide", "_selected_action": [rating.pk]}

    asked = client.post(url, chosen)
    assert 'name="reason"' in asked.content.decode()
    assert "Takes rating(s)" in asked.content.decode()
    refused = client.post(url, {**chosen, "confirm": "1", "reason": ""})
    assert refused.status_code == 400
    assert "This field is required" in refused.content.decode()
    rating.refresh_from_db()
    assert not rating.hidden

    done = client.post(url, {**chosen, "confirm": "1", "reason": "Spam link."}, follow=True)

    assert "hidden." in done.content.decode()
    rating.refresh_from_db()
    assert rating.hidden
    event = RoomEvent.objects.get(room=rating.room, kind="rating_hidden")
    assert (event.actor, event.data["reason"]) == (staff, "Spam link.")
    listed = client.get(url).content.decode()
    assert "Spam" in listed


def test_ratings_cannot_be_added_or_deleted_in_admin(expert: User, staff: User) -> None:
    rating = rating_add(expert, 4, "Good")
    client = Client()
    login_with_mfa(client, staff, totp_enable(staff))
    assert client.get(reverse("admin:rooms_rating_add")).status_code == 403
    assert client.get(reverse("admin:rooms_rating_delete", args=[rating.pk])).status_code == 403
    page = client.get(reverse("admin:rooms_rating_change", args=[rating.pk])).content.decode()
    assert 'name="stars"' not in page
    assert Rating.objects.filter(pk=rating.pk, stars=4).exists()
