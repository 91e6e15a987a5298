""" "Your sessions": upcoming, past and canceled never overlap, a session is past as soon as its
room closes (not only once its booked end has passed), past runs newest first, and a past
session links to its bill, rating and dispute. Also the booking page's hold, with its date and
zone."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.models import Settlement
from rooms import selectors, services
from rooms.models import CloseReason, Offering, Room, RoomState, Seat
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    room_closed_after_a_call,
    seat_booked,
    seat_pay,
    weekdays_available,
)

pytestmark = pytest.mark.django_db

# Ten minutes into a 60-minute session that ended at +3 minutes: long before its booked end.
SOON_AFTER = CALL_START + dt.timedelta(minutes=10)


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _table(page: str, table_id: str) -> str:
    """The HTML of one table of the page (empty if the page has none with that id)."""
    found = re.search(rf'<table id="{table_id}".*?</table>', page, re.S)
    return found.group(0) if found else ""


def _client_lists(client: User, now: dt.datetime) -> tuple[list[int], list[int], list[int]]:
    return (
        [seat.pk for seat in selectors.client_seats_upcoming(client, now)],
        [seat.pk for seat in selectors.client_seats_past(client, now)],
        [seat.pk for seat in selectors.client_seats_canceled(client)],
    )


def _expert_lists(expert: User, now: dt.datetime) -> tuple[list[int], list[int], list[int]]:
    return (
        [room.pk for room in selectors.expert_rooms_upcoming(expert, now)],
        [room.pk for room in selectors.expert_rooms_past(expert, now)],
        [room.pk for room in selectors.expert_rooms_canceled(expert)],
    )


def test_a_call_that_ended_early_is_past_at_once_for_the_client_and_the_expert() -> None:
    seat = seat_booked()
    room = room_closed_after_a_call(seat)
    assert room.closed_at is not None and room.closed_at < room.ends_at
    assert SOON_AFTER < room.ends_at

    assert _client_lists(seat.client, SOON_AFTER) == ([], [seat.pk], [])
    assert _expert_lists(room.expert, SOON_AFTER) == ([], [room.pk], [])
    # The annotations the dashboard's rows read.
    past = vars(selectors.client_seats_past(seat.client, SOON_AFTER).get())
    settlement = Settlement.objects.get(payment__seat=seat)
    assert settlement.amount_minor > 0
    assert (past["charged_minor"], past["came"], past["stars"]) == (
        settlement.amount_minor,
        True,
        None,
    )


@pytest.mark.parametrize(
    "reason",
    [
        CloseReason.CLIENT_NO_SHOW,
        CloseReason.EXPERT_NO_SHOW,
        CloseReason.EMPTY,
        CloseReason.ENDED_BY_EXPERT,
        CloseReason.TERMINATED_BY_STAFF,
    ],
)
def test_a_room_closed_for_any_reason_before_its_end_is_past(reason: str) -> None:
    seat = seat_booked()
    with time_machine.travel(CALL_START - dt.timedelta(minutes=1), tick=False):
        services.rooms_advance()
    with time_machine.travel(CALL_START + dt.timedelta(minutes=12), tick=False):
        room = services.room_close(seat.room_id, reason=reason)
    assert room.state == RoomState.CLOSED

    assert _client_lists(seat.client, SOON_AFTER + dt.timedelta(minutes=5)) == ([], [seat.pk], [])
    assert _expert_lists(room.expert, SOON_AFTER + dt.timedelta(minutes=5)) == ([], [room.pk], [])


def test_the_dashboard_links_a_call_that_ended_early_to_its_bill_rating_and_dispute() -> None:
    seat = seat_booked()
    room = room_closed_after_a_call(seat)
    join = reverse("rooms:join", args=[room.pk])
    with time_machine.travel(SOON_AFTER, tick=False):
        client_page = _signed_in(seat.client).get(reverse("rooms:dashboard")).content.decode()
        expert_page = _signed_in(room.expert).get(reverse("rooms:dashboard")).content.decode()
        room_page = _signed_in(seat.client).get(join).content.decode()

    past = _table(client_page, "booked-past-table")
    assert f'data-seat-id="{seat.pk}"' in past
    assert f'href="{join}#summary"' in past
    assert f'href="{join}#rating-form"' in past
    assert f'href="{join}#dispute-path"' in past
    # 14:03 UTC, in the client's zone (Berlin).
    assert "Ended: ended by the expert at 15:03" in past
    assert "No upcoming sessions." in client_page
    hosting_past = _table(expert_page, "hosting-past-table")
    assert f'data-room-id="{room.pk}"' in hosting_past
    assert f'href="{join}#summary"' in hosting_past
    assert 'id="hosting-upcoming-table"' not in expert_page
    # The anchors the links point at are on the room page.
    for anchor in ('id="summary"', 'id="rating-form"', 'id="dispute-path"'):
        assert anchor in room_page


def test_a_rated_session_says_its_rating_on_the_dashboard() -> None:
    seat = seat_booked()
    room = room_closed_after_a_call(seat)
    with time_machine.travel(SOON_AFTER, tick=False):
        services.rating_give(room.pk, seat.client, stars=4)
        page = _signed_in(seat.client).get(reverse("rooms:dashboard")).content.decode()
    assert "Rated 4 of 5" in _table(page, "booked-past-table")


def test_a_client_who_never_came_gets_the_bill_but_nothing_to_rate() -> None:
    seat = seat_booked()
    with time_machine.travel(CALL_START - dt.timedelta(minutes=1), tick=False):
        services.rooms_advance()
    with time_machine.travel(CALL_START + dt.timedelta(minutes=12), tick=False):
        services.room_close(seat.room_id, reason=CloseReason.CLIENT_NO_SHOW)
        page = _signed_in(seat.client).get(reverse("rooms:dashboard")).content.decode()
    past = _table(page, "booked-past-table")
    assert "#summary" in past
    assert "#rating-form" not in past


def _book(client: User, offering: Offering, start: dt.datetime) -> Seat:
    with time_machine.travel(NOW, tick=False):
        return seat_pay(services.booking_reserve(client, offering, start))


def test_past_sessions_run_newest_first_and_each_session_is_in_exactly_one_list() -> None:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert)
    client = UserFactory.create(time_zone="UTC")
    day = CALL_START.replace(hour=0)
    # Opened and closed at once (nobody came): closed long before its end.
    at_twelve = _book(client, offering, day.replace(hour=12))
    with time_machine.travel(day.replace(hour=11, minute=59), tick=False):
        services.room_open(at_twelve.room_id)
    with time_machine.travel(day.replace(hour=12, minute=11), tick=False):
        services.room_close(at_twelve.room_id, reason=CloseReason.EXPERT_NO_SHOW)
    # The call of 14:00, ended by the expert at 14:03.
    at_two = _book(client, offering, CALL_START)
    room_closed_after_a_call(at_two)
    # Never swept: over only once its booked end (17:00) has passed.
    at_four = _book(client, offering, day.replace(hour=16))
    tomorrow = _book(client, offering, day.replace(hour=10) + dt.timedelta(days=1))
    canceled = _book(client, offering, day.replace(hour=12) + dt.timedelta(days=1))
    with time_machine.travel(NOW, tick=False):
        services.seat_cancel(canceled.pk, actor=client)
    room = {seat.pk: seat.room_id for seat in (at_twelve, at_two, at_four, tomorrow, canceled)}

    assert _client_lists(client, SOON_AFTER) == (
        [at_four.pk, tomorrow.pk],
        [at_two.pk, at_twelve.pk],
        [canceled.pk],
    )
    assert _expert_lists(expert, SOON_AFTER) == (
        [room[at_four.pk], room[tomorrow.pk]],
        [room[at_two.pk], room[at_twelve.pk]],
        [room[canceled.pk]],
    )
    evening = day.replace(hour=17, minute=30)
    assert Room.objects.get(pk=room[at_four.pk]).state == RoomState.SCHEDULED
    assert _client_lists(client, evening) == (
        [tomorrow.pk],
        [at_four.pk, at_two.pk, at_twelve.pk],
        [canceled.pk],
    )
    assert _expert_lists(expert, evening) == (
        [room[tomorrow.pk]],
        [room[at_four.pk], room[at_two.pk], room[at_twelve.pk]],
        [room[canceled.pk]],
    )


def test_the_action_columns_have_a_name_for_screen_readers() -> None:
    seat = seat_booked()
    with time_machine.travel(NOW, tick=False):
        client_page = _signed_in(seat.client).get(reverse("rooms:dashboard")).content.decode()
        expert_page = _signed_in(seat.room.expert).get(reverse("rooms:dashboard")).content.decode()
        offerings = _signed_in(seat.room.expert).get(reverse("rooms:expert_offerings"))
    for page in (client_page, expert_page, offerings.content.decode()):
        assert "<th></th>" not in page
        assert '<span class="visually-hidden">Actions</span></th>' in page


def test_the_hold_names_its_date_time_and_zone() -> None:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert)
    client = UserFactory.create(time_zone="America/Los_Angeles")
    with time_machine.travel(NOW, tick=False):
        seat = services.booking_reserve(client, offering, CALL_START)
        page = (
            _signed_in(client).get(reverse("rooms:seat_confirm", args=[seat.pk])).content.decode()
        )
    # NOW is 00:00 on Tuesday 1 December in Los Angeles; the session starts at 06:00 there.
    held = seat.reserved_until.astimezone(dt.timezone(dt.timedelta(hours=-8)))
    assert (
        f'We hold this time for you until <time datetime="{seat.reserved_until.isoformat()}">'
        f"Tuesday 1 December 2026, {held:%H:%M} (America/Los_Angeles)</time>."
    ) in page
    assert "Tuesday 1 December 2026, 06:00–07:00 (America/Los_Angeles)" in page


@pytest.mark.parametrize("cookie", ["America/Los_Angeles", "America%2FLos_Angeles"])
def test_a_visitor_sees_the_slots_in_the_zone_their_browser_told(cookie: str) -> None:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert)
    visitor = Client()
    visitor.cookies["tz"] = cookie
    with time_machine.travel(NOW, tick=False):
        page = visitor.get(reverse("rooms:offering_book", args=[offering.pk])).content.decode()
    assert "Times are in America/Los_Angeles." in page
    # 14:00 UTC is 06:00 in Los Angeles.
    assert '<span class="visually-hidden">Tuesday 1 December, </span>06:00' in page
    assert 'value="2026-12-01T14:00:00+00:00"' in page
