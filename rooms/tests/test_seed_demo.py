"""`manage.py seed_demo`: the demo people and experts of `make run`, created once and kept, and
the try-out session, paid and open now, made fresh on every run."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
import time_machine
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.core.mail import EmailMessage
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from pytest_django import DjangoCaptureOnCommitCallbacks

from accounts import selectors
from accounts.models import ExpertEvent, ExpertEventKind, ExpertStatus, OutboundEmail, User
from accounts.tests.helpers import totp_code
from rooms import selectors as rooms_selectors
from rooms.management.commands.seed_demo import try_out_slot
from rooms.models import (
    AvailabilityOverride,
    AvailabilityRule,
    Offering,
    Room,
    RoomKind,
    RoomState,
    SeatState,
)

pytestmark = pytest.mark.django_db


def _berlin(day: int, hour: int, minute: int, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, 12, day, hour, minute, second, tzinfo=BERLIN)


@pytest.fixture(autouse=True)
def _a_weekday_afternoon_in_berlin() -> Iterator[None]:
    """The try-out is shaped by the demo expert's local clock (see the midnight tests below):
    every other test runs at a fixed ordinary hour, whatever the hour the suite runs at."""
    with time_machine.travel(_berlin(2, 15, 3, 30)):
        yield


BERLIN = ZoneInfo("Europe/Berlin")
DEMO_PASSWORD = "parley-demo"
EXPERT = "expert@demo.test"
CLIENT = "client@demo.test"
SECOND_CLIENT = "client2@demo.test"
STAFF = "staff@demo.test"
EXPERTS = [EXPERT, "kenji@demo.test", "maya@demo.test", "priya@demo.test"]


def _seed(capture: DjangoCaptureOnCommitCallbacks) -> str:
    out = StringIO()
    # The expert's approval email is queued for after commit; run it as a commit would.
    with capture(execute=True):
        call_command("seed_demo", stdout=out)
    return out.getvalue()


def _printed_secret(output: str) -> str:
    match = re.search(r"two-factor \(TOTP\) secret (\S+)", output)
    assert match is not None, output
    return match.group(1)


def _row_counts() -> dict[str, int]:
    return {
        "users": User.objects.count(),
        "email addresses": EmailAddress.objects.count(),
        "expert events": ExpertEvent.objects.count(),
        "authenticators": Authenticator.objects.count(),
        "offerings": Offering.objects.count(),
        "availability rules": AvailabilityRule.objects.count(),
        "overrides": AvailabilityOverride.objects.count(),
        "group sessions": Room.objects.filter(kind=RoomKind.GROUP).count(),
    }


def test_seed_creates_an_approved_expert_who_is_listed(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    expert = User.objects.get(email=EXPERT)
    staff = User.objects.get(email=STAFF)
    profile = expert.expert_profile
    assert profile.status == ExpertStatus.APPROVED
    assert profile.decided_by == staff
    assert profile in selectors.experts_listed()
    assert list(profile.events.values_list("kind", flat=True)) == [
        ExpertEventKind.APPLIED,
        ExpertEventKind.APPROVED,
    ]


def test_seed_gives_the_expert_hours_and_offerings_that_clients_can_book(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    expert = User.objects.get(email="expert@demo.test")
    assert AvailabilityRule.objects.filter(expert=expert).count() == 10  # Mon–Fri, two a day
    offerings = list(rooms_selectors.offerings_bookable(expert))
    assert {o.capacity for o in offerings} == {1, 3}
    private = next(o for o in offerings if o.capacity == 1)
    now = timezone.now()
    assert rooms_selectors.offering_slots(private, now, now + dt.timedelta(days=7))


@pytest.mark.parametrize("email", [CLIENT, SECOND_CLIENT])
def test_seed_creates_plain_clients(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks, email: str
) -> None:
    _seed(django_capture_on_commit_callbacks)
    client_user = User.objects.get(email=email)
    assert not client_user.is_staff
    assert not hasattr(client_user, "expert_profile")


def test_seed_creates_staff_with_a_totp_authenticator(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    staff = User.objects.get(email=STAFF)
    assert staff.is_staff
    assert Authenticator.objects.filter(user=staff, type=Authenticator.Type.TOTP).count() == 1
    for email in (EXPERT, CLIENT):
        assert not User.objects.get(email=email).is_staff


def test_seed_gives_every_demo_user_a_verified_primary_email(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    for email in (EXPERT, CLIENT, STAFF):
        user = User.objects.get(email=email)
        address = EmailAddress.objects.get(user=user)
        assert (address.email, address.verified, address.primary) == (email, True, True)


def test_seed_sends_each_expert_their_approval_email(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    _seed(django_capture_on_commit_callbacks)
    approvals = [m.to for m in mailoutbox if "approved" in m.subject.lower()]
    assert sorted(approvals) == sorted([[email] for email in EXPERTS])
    assert not OutboundEmail.objects.filter(sent_at__isnull=True).exists()


@pytest.mark.parametrize("email", [EXPERT, CLIENT])
def test_demo_expert_and_client_log_in_with_the_demo_password(
    client: Client,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    email: str,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    response = client.post(reverse("account_login"), {"login": email, "password": DEMO_PASSWORD})
    assert response.status_code == 302, response.content
    assert response["Location"] == reverse("home")
    assert client.session["_auth_user_id"] == str(User.objects.get(email=email).pk)


def test_demo_staff_login_asks_for_the_printed_totp_code(
    client: Client,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    secret = _printed_secret(_seed(django_capture_on_commit_callbacks))
    response = client.post(reverse("account_login"), {"login": STAFF, "password": DEMO_PASSWORD})
    assert response.status_code == 302, response.content
    assert response["Location"] == reverse("mfa_authenticate")
    # The password alone signs nobody in.
    assert "_auth_user_id" not in client.session

    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert response.status_code == 302, response.content
    assert client.get("/admin/").status_code == 200


def test_seed_prints_the_three_logins_and_the_totp_secret(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    output = _seed(django_capture_on_commit_callbacks)
    for email in (EXPERT, CLIENT, STAFF):
        assert email in output
    assert DEMO_PASSWORD in output
    secret = _printed_secret(output)
    assert f"secret={secret}" in output
    assert len(secret) >= 16


def test_seed_twice_keeps_the_same_people_and_secret_and_adds_no_rows(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    first_output = _seed(django_capture_on_commit_callbacks)
    pks = {email: User.objects.get(email=email).pk for email in (EXPERT, CLIENT, STAFF)}
    counts = _row_counts()
    assert counts == {
        "users": 7,
        "email addresses": 7,
        "expert events": 8,
        "authenticators": 1,
        # Three of the expert's, two each of the others', and the try-out's own.
        "offerings": 3 + 2 + 2 + 2 + 1,
        "availability rules": 10 + 6 + 4 + 7,
        "overrides": 0,
        "group sessions": 1,
    }
    approvals = [m for m in mailoutbox if "approved" in m.subject.lower()]

    second_output = _seed(django_capture_on_commit_callbacks)

    assert {email: User.objects.get(email=email).pk for email in pks} == pks
    assert _row_counts() == counts
    assert _printed_secret(second_output) == _printed_secret(first_output)
    assert [m for m in mailoutbox if "approved" in m.subject.lower()] == approvals
    assert User.objects.get(email=EXPERT).expert_profile.status == ExpertStatus.APPROVED


def test_seed_twice_still_lets_the_demo_people_log_in(
    client: Client,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    secret = _printed_secret(_seed(django_capture_on_commit_callbacks))
    response = client.post(reverse("account_login"), {"login": STAFF, "password": DEMO_PASSWORD})
    assert response["Location"] == reverse("mfa_authenticate")
    response = client.post(reverse("mfa_authenticate"), {"code": totp_code(secret)})
    assert response.status_code == 302, response.content
    assert client.session["_auth_user_id"] == str(User.objects.get(email=STAFF).pk)


# --- the directory --------------------------------------------------------------------------


def test_seed_lists_four_experts_in_different_zones_with_every_kind_of_offering(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    listed = list(selectors.experts_listed())
    assert sorted(p.user.email for p in listed) == sorted(EXPERTS)
    assert len({p.time_zone for p in listed}) == 4
    now = timezone.now()
    for profile in listed:
        offerings = list(rooms_selectors.offerings_bookable(profile.user))
        assert offerings, profile.user.email
        private = [o for o in offerings if o.capacity == 1]
        # Every expert has times a client can book in the coming week.
        assert any(
            rooms_selectors.offering_slots(o, now, now + dt.timedelta(days=7)) for o in private
        ), profile.user.email
    bookable = [o for p in listed for o in rooms_selectors.offerings_bookable(p.user)]
    assert {o.pricing for o in bookable} == {"fixed", "per_minute"}
    assert TRY_OUT not in {o.title for o in bookable}
    group = Room.objects.get(kind=RoomKind.GROUP)
    assert (group.state, group.capacity) == (RoomState.SCHEDULED, 3)
    assert group.starts_at > now


# --- the try-out session --------------------------------------------------------------------

TRY_OUT = "Try-out call (demo)"


def _try_out_printed(output: str) -> tuple[str, str]:
    client = re.search(r"client  (http\S+/r/\d+/)  log in as client@demo\.test / (\S+)", output)
    expert = re.search(r"expert  (http\S+/r/\d+/)  log in as expert@demo\.test / (\S+)", output)
    assert client is not None and expert is not None, output
    assert client.group(2) == expert.group(2) == DEMO_PASSWORD
    return client.group(1), expert.group(1)


def _open_try_outs() -> list[Room]:
    return list(
        Room.objects.filter(title=TRY_OUT).exclude(state__in=(RoomState.CLOSED, RoomState.CANCELED))
    )


def test_seed_books_a_paid_session_whose_lobby_is_open_now(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    before = timezone.now()
    output = _seed(django_capture_on_commit_callbacks)
    [room] = _open_try_outs()
    assert room.state == RoomState.OPEN
    assert room.expert.email == EXPERT
    assert before < room.starts_at <= before + dt.timedelta(minutes=3)
    assert room.ends_at - room.starts_at >= dt.timedelta(minutes=15)
    [seat] = room.seats.all()
    assert (seat.client.email, seat.state) == (CLIENT, SeatState.CONFIRMED)
    assert seat.payment is not None and seat.payment.state == "authorized"
    assert seat.payment.provider == "local"
    client_url, expert_url = _try_out_printed(output)
    assert client_url == expert_url
    assert client_url.endswith(reverse("rooms:join", args=[room.pk]))


def test_seed_leaves_nothing_else_bookable_through_the_try_out(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    expert = User.objects.get(email=EXPERT)
    try_out = Offering.objects.get(title=TRY_OUT)
    assert not try_out.is_active
    assert not AvailabilityOverride.objects.filter(expert=expert).exists()
    assert try_out not in rooms_selectors.offerings_bookable(expert)


def test_the_printed_link_leads_through_login_to_the_session(
    client: Client,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    client_url, _ = _try_out_printed(_seed(django_capture_on_commit_callbacks))
    path = client_url.removeprefix(settings.SITE_URL)
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    login = client.post(
        response["Location"], {"login": CLIENT, "password": DEMO_PASSWORD, "next": path}
    )
    assert (login.status_code, login["Location"]) == (302, path)
    assert client.get(path).status_code == 200


def test_seed_again_cancels_the_waiting_try_out_free_and_books_a_fresh_one(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    [first] = _open_try_outs()
    first_seat = first.seats.get()

    with time_machine.travel(timezone.now() + dt.timedelta(minutes=5)):
        _seed(django_capture_on_commit_callbacks)

    first.refresh_from_db()
    first_seat.refresh_from_db()
    assert first.state == RoomState.CANCELED
    assert (first_seat.state, first_seat.cancel_fee_minor) == (SeatState.CANCELED, 0)
    assert first_seat.payment is not None and first_seat.payment.captured_minor == 0
    [second] = _open_try_outs()
    assert second.pk != first.pk and second.state == RoomState.OPEN


def test_seed_again_keeps_a_try_out_whose_call_is_under_way(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    from rooms import services as rooms_services

    _seed(django_capture_on_commit_callbacks)
    [first] = _open_try_outs()
    rooms_services.room_mark_live(first.pk, at=timezone.now())

    output = _seed(django_capture_on_commit_callbacks)

    assert [room.pk for room in _open_try_outs()] == [first.pk]
    assert "under way" in output
    client_url, _ = _try_out_printed(output)
    assert client_url.endswith(reverse("rooms:join", args=[first.pk]))


def test_seed_again_ends_a_call_nearly_over_and_books_the_next_right_away(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    from rooms import services as rooms_services

    _seed(django_capture_on_commit_callbacks)
    [first] = _open_try_outs()
    rooms_services.room_mark_live(first.pk, at=first.starts_at)

    with time_machine.travel(first.ends_at - dt.timedelta(minutes=8), tick=False):
        _seed(django_capture_on_commit_callbacks)
        [second] = _open_try_outs()

    first.refresh_from_db()
    assert (first.state, first.close_reason) == (RoomState.CLOSED, "ended_by_expert")
    # The ended call frees the rest of its time: the next starts within a minute or two, its
    # lobby already open.
    now = first.ends_at - dt.timedelta(minutes=8)
    assert now < second.starts_at <= now + dt.timedelta(minutes=2)
    assert second.state == RoomState.OPEN


def test_seed_near_the_experts_midnight_books_a_shorter_session_that_ends_before_it(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    with time_machine.travel(_berlin(2, 23, 40, 10), tick=False):
        _seed(django_capture_on_commit_callbacks)
        [room] = _open_try_outs()
    assert room.starts_at == _berlin(2, 23, 42)
    assert room.ends_at == _berlin(2, 23, 59)
    assert room.state == RoomState.OPEN


def test_seed_in_the_experts_last_quarter_hour_books_midnight_and_says_when_it_opens(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # A session lasts at least 15 minutes and cannot cross the expert's midnight: from 23:45
    # in Berlin the try-out starts at midnight, and until 23:50 its lobby is not open yet.
    with time_machine.travel(_berlin(2, 23, 48, 21), tick=False):
        output = _seed(django_capture_on_commit_callbacks)
        [room] = _open_try_outs()
    assert (room.starts_at, room.state) == (_berlin(3, 0, 0), RoomState.SCHEDULED)
    assert "lobby open" not in output
    assert "not open yet: it lets you in from 22:50 UTC (in 2 min)" in output

    with time_machine.travel(_berlin(2, 23, 55), tick=False):
        output = _seed(django_capture_on_commit_callbacks)
        [room] = _open_try_outs()
    assert (room.starts_at, room.state) == (_berlin(3, 0, 0), RoomState.OPEN)
    assert "lobby open" in output


@pytest.mark.parametrize(
    ("earliest", "start", "minutes"),
    [
        # Afternoon, inside the weekly hours: on the minute, not on the hours' grid.
        (_berlin(2, 15, 4, 30), _berlin(2, 15, 5), 30),
        (_berlin(2, 23, 29), _berlin(2, 23, 29), 30),
        (_berlin(2, 23, 30), _berlin(2, 23, 30), 29),
        (_berlin(2, 23, 44), _berlin(2, 23, 44), 15),
        # Too little of the day left: the session starts at midnight.
        (_berlin(2, 23, 45), _berlin(3, 0, 0), 30),
    ],
)
def test_try_out_slot_never_crosses_the_experts_midnight(
    earliest: dt.datetime, start: dt.datetime, minutes: int
) -> None:
    assert try_out_slot(earliest, BERLIN) == (start, minutes)
