from __future__ import annotations

from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.errors import InvalidTransition
from accounts.models import ExpertEvent, ExpertProfile, ExpertStatus, OutboundEmail
from accounts.tests.factories import (
    ExpertProfileFactory,
    StaffFactory,
    UserFactory,
    totp_enable,
)
from accounts.tests.helpers import login_with_mfa

# The race helpers are the project's one set (rooms' tests): threads, locks, overlap proof.
from rooms.tests.races import lock_held_until_waited_on, race

pytestmark = pytest.mark.django_db

APPLICATION: dict[str, Any] = {
    "headline": "Pricing pages that convert",
    "bio": "I have priced thirty SaaS products and rewritten their pricing pages. " * 2,
    "languages": ["en", "fr"],
    "currency": "EUR",
    "time_zone": "Europe/Paris",
}
APPLY_URL = reverse("accounts:expert_apply")
CHANGELIST = reverse("admin:accounts_expertprofile_changelist")


@pytest.fixture
def staff_client() -> Client:
    staff = StaffFactory.create()
    client = Client()
    login_with_mfa(client, staff, totp_enable(staff))
    return client


def test_unverified_user_is_stopped_before_applying_and_nothing_is_written(
    client: Client, mailoutbox: list[Any], django_capture_on_commit_callbacks: Any
) -> None:
    client.force_login(UserFactory.create(verified=False))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(APPLY_URL, APPLICATION)
    assert response.status_code == 200
    assert "Verify Your Email Address" in response.content.decode()
    assert not ExpertProfile.objects.exists()
    # The page promises a fresh verification email: it was sent.
    assert len(mailoutbox) == 1


def test_application_is_pending_and_not_listed(client: Client) -> None:
    applicant = UserFactory.create()
    client.force_login(applicant)
    response = client.post(APPLY_URL, APPLICATION)
    assert response.status_code == 302

    profile = ExpertProfile.objects.get(user=applicant)
    assert profile.status == ExpertStatus.PENDING
    assert profile.languages == ["en", "fr"]
    assert [event.kind for event in profile.events.all()] == ["applied"]
    page = client.get(APPLY_URL).content.decode()
    assert "waiting for review" in page

    anonymous = Client()
    assert profile.user.display_name not in anonymous.get("/experts/").content.decode()
    assert anonymous.get(f"/experts/{profile.slug}/").status_code == 404


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"headline": "  "}, "This field is required."),
        ({"bio": "Too short."}, "Ensure this value has at least 50 characters"),
        ({"languages": []}, "This field is required."),
        ({"languages": ["xx"]}, "Select a valid choice. xx is not one of the available choices."),
        ({"currency": "XYZ"}, "Select a valid choice. XYZ is not one of the available choices."),
        ({"time_zone": "Nowhere/Land"}, "Select a valid choice."),
    ],
)
def test_application_with_bad_input_says_what_is_wrong_and_writes_nothing(
    client: Client, change: dict[str, Any], message: str
) -> None:
    client.force_login(UserFactory.create())
    response = client.post(APPLY_URL, {**APPLICATION, **change})
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not ExpertProfile.objects.exists()
    assert not ExpertEvent.objects.exists()


def test_staff_approval_in_admin_lists_the_expert_and_tells_them(
    staff_client: Client, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    profile = ExpertProfileFactory.create()
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            CHANGELIST, {"action": "approve", "_selected_action": [profile.pk]}
        )
    assert response.status_code == 302

    profile.refresh_from_db()
    assert profile.status == ExpertStatus.APPROVED
    assert profile.decided_by is not None and profile.decided_by.is_staff
    assert [event.kind for event in profile.events.all()] == ["approved"]

    listing = Client().get("/experts/").content.decode()
    assert profile.user.display_name in listing
    assert Client().get(f"/experts/{profile.slug}/").status_code == 200
    assert [message.subject for message in mailoutbox] == ["You are approved as a Parley expert"]


def test_staff_rejection_asks_for_a_reason_that_the_applicant_then_sees(
    staff_client: Client, django_capture_on_commit_callbacks: Any, mailoutbox: list[Any]
) -> None:
    profile = ExpertProfileFactory.create()
    selected = {"action": "reject", "_selected_action": [profile.pk]}

    # The action first shows a page that asks for the reason.
    page = staff_client.post(CHANGELIST, selected)
    assert page.status_code == 200
    assert "The applicants below will see this reason" in page.content.decode()

    # A blank reason is refused and nothing changes.
    page = staff_client.post(CHANGELIST, {**selected, "confirm": "1", "reason": "   "})
    assert page.status_code == 200
    assert "This field is required." in page.content.decode()
    profile.refresh_from_db()
    assert profile.status == ExpertStatus.PENDING

    reason = "Please describe two client engagements in your bio."
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(CHANGELIST, {**selected, "confirm": "1", "reason": reason})
    assert response.status_code == 302
    profile.refresh_from_db()
    assert (profile.status, profile.decision_reason) == (ExpertStatus.REJECTED, reason)
    assert reason in mailoutbox[0].body

    applicant = Client()
    applicant.force_login(profile.user)
    page_text = applicant.get(APPLY_URL).content.decode()
    assert "Your application was not approved." in page_text
    assert reason in page_text
    assert profile.user.display_name not in Client().get("/experts/").content.decode()

    # Resubmitting puts it back in the queue and clears the old decision.
    response = applicant.post(APPLY_URL, APPLICATION)
    assert response.status_code == 302
    profile.refresh_from_db()
    assert (profile.status, profile.decision_reason) == (ExpertStatus.PENDING, "")
    assert [event.kind for event in profile.events.all()] == ["rejected", "resubmitted"]


def test_approved_expert_editing_the_profile_stays_approved() -> None:
    profile = ExpertProfileFactory.create(status=ExpertStatus.APPROVED)
    services.expert_profile_submit(profile.user, **{**APPLICATION, "headline": "New headline"})
    profile.refresh_from_db()
    assert (profile.status, profile.headline) == (ExpertStatus.APPROVED, "New headline")


def test_deciding_twice_is_refused_with_a_clear_error() -> None:
    staff = StaffFactory.create()
    profile = ExpertProfileFactory.create()
    services.expert_approve(profile.pk, actor=staff)
    with pytest.raises(InvalidTransition, match="already “Approved”"):
        services.expert_approve(profile.pk, actor=staff)
    with pytest.raises(InvalidTransition, match="cannot become “Not approved”"):
        services.expert_reject(profile.pk, actor=staff, reason="Changed my mind")
    assert ExpertEvent.objects.filter(profile=profile).count() == 1
    assert OutboundEmail.objects.count() == 1


def test_rejection_without_a_reason_is_refused_by_service_and_schema() -> None:
    staff = StaffFactory.create()
    profile = ExpertProfileFactory.create()
    with pytest.raises(InvalidTransition, match="Give a reason"):
        services.expert_reject(profile.pk, actor=staff, reason=" ")
    with pytest.raises(IntegrityError), transaction.atomic():
        ExpertProfile.objects.filter(pk=profile.pk).update(status=ExpertStatus.REJECTED)


def test_non_staff_cannot_reach_the_approval_action(client: Client) -> None:
    profile = ExpertProfileFactory.create()
    client.force_login(UserFactory.create())
    response = client.post(CHANGELIST, {"action": "approve", "_selected_action": [profile.pk]})
    assert response.status_code == 403
    profile.refresh_from_db()
    assert profile.status == ExpertStatus.PENDING


@pytest.mark.django_db(transaction=True)
def test_two_staff_deciding_at_once_produce_exactly_one_decision() -> None:
    approver, rejecter = StaffFactory.create(), StaffFactory.create()
    profile = ExpertProfileFactory.create()

    # Both conditional UPDATEs queue on the application's row: they are inside their
    # transactions together when the holder lets go, and the second re-reads the first's
    # decision.
    with lock_held_until_waited_on(
        lambda: ExpertProfile.objects.select_for_update().get(pk=profile.pk), waiters=2
    ) as held:
        outcomes = race(
            [
                lambda: services.expert_approve(profile.pk, actor=approver),
                lambda: services.expert_reject(profile.pk, actor=rejecter, reason="No"),
            ]
        )

    assert held.seen, f"the two staff never queued together ({held.most_waiting} seen)"
    assert outcomes.overlapped()
    profile.refresh_from_db()
    if outcomes[0] == "ok":
        assert (
            outcomes[1]
            == "This application is already “Approved”; it cannot become “Not approved”."
        )
        assert profile.status == ExpertStatus.APPROVED
    else:
        assert outcomes == [
            "This application is already “Not approved”; it cannot become “Approved”.",
            "ok",
        ]
        assert profile.status == ExpertStatus.REJECTED
    assert ExpertEvent.objects.filter(profile=profile).count() == 1
