"""`manage.py seed_demo`: the three demo people of `make run`, created once and kept."""

from __future__ import annotations

import datetime as dt
import re
from io import StringIO

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
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
from rooms.models import AvailabilityRule, Offering

pytestmark = pytest.mark.django_db

DEMO_PASSWORD = "parley-demo"
EXPERT = "expert@demo.test"
CLIENT = "client@demo.test"
STAFF = "staff@demo.test"


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
        "outbound emails": OutboundEmail.objects.count(),
        "authenticators": Authenticator.objects.count(),
        "offerings": Offering.objects.count(),
        "availability rules": AvailabilityRule.objects.count(),
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
    assert list(selectors.experts_listed()) == [profile]
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


def test_seed_creates_a_plain_client(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    _seed(django_capture_on_commit_callbacks)
    client_user = User.objects.get(email=CLIENT)
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


def test_seed_sends_the_expert_their_approval_email(
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    _seed(django_capture_on_commit_callbacks)
    assert [message.to for message in mailoutbox] == [[EXPERT]]
    assert OutboundEmail.objects.get().sent_at is not None


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
        "users": 3,
        "email addresses": 3,
        "expert events": 2,
        "outbound emails": 1,
        "authenticators": 1,
        "offerings": 3,
        "availability rules": 10,
    }
    sent = len(mailoutbox)

    second_output = _seed(django_capture_on_commit_callbacks)

    assert {email: User.objects.get(email=email).pk for email in pks} == pks
    assert _row_counts() == counts
    assert _printed_secret(second_output) == _printed_secret(first_output)
    assert len(mailoutbox) == sent
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
