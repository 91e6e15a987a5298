"""What staff can and cannot do to accounts in admin: accounts are banned, never deleted;
only a superuser sets someone's password; email addresses and second factors are read-only
there (a second factor's secret never shown); nobody decides their own expert application."""

from __future__ import annotations

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse

from accounts import services
from accounts.errors import InvalidTransition
from accounts.models import ExpertEvent, ExpertProfile, ExpertStatus, OutboundEmail, User
from accounts.tests.factories import (
    ExpertProfileFactory,
    StaffFactory,
    UserFactory,
    totp_enable,
)
from accounts.tests.helpers import login_with_mfa

pytestmark = pytest.mark.django_db


def _desk(staff: User) -> Client:
    browser = Client()
    login_with_mfa(browser, staff, totp_enable(staff))
    return browser


def _moderator(*codenames: str) -> User:
    """Staff, not a superuser, holding just these permissions."""
    moderator = StaffFactory.create(is_superuser=False)
    moderator.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return moderator


def test_only_a_superuser_sets_another_accounts_password() -> None:
    target = UserFactory.create()
    url = reverse("admin:auth_user_password_change", args=[target.pk])
    moderator = _desk(_moderator("view_user", "change_user"))
    response = moderator.get(url)
    assert response.status_code == 403
    response = moderator.post(url, {"password1": "n3w-Passw0rd!x", "password2": "n3w-Passw0rd!x"})
    assert response.status_code == 403
    target.refresh_from_db()
    assert not target.check_password("n3w-Passw0rd!x")

    assert _desk(StaffFactory.create()).get(url).status_code == 200


def test_an_account_cannot_be_deleted_from_admin_even_by_a_superuser() -> None:
    target = UserFactory.create()
    desk = _desk(StaffFactory.create())
    url = reverse("admin:accounts_user_delete", args=[target.pk])
    assert desk.get(url).status_code == 403
    assert desk.post(url, {"post": "yes"}).status_code == 403
    changelist = desk.get(reverse("admin:accounts_user_changelist")).content.decode()
    assert "delete_selected" not in changelist
    response = desk.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "delete_selected", "_selected_action": [target.pk], "post": "yes"},
    )
    assert response.status_code in (200, 302)
    assert User.objects.filter(pk=target.pk).exists()


def test_ban_actions_are_offered_only_to_staff_who_may_change_users() -> None:
    viewer = _desk(_moderator("view_user"))
    page = viewer.get(reverse("admin:accounts_user_changelist")).content.decode()
    assert 'value="ban"' not in page
    target = UserFactory.create()
    viewer.post(
        reverse("admin:accounts_user_changelist"),
        {"action": "ban", "_selected_action": [target.pk], "confirm": "1", "reason": "spam"},
    )
    assert User.objects.get(pk=target.pk).is_active

    changer = _desk(_moderator("view_user", "change_user"))
    page = changer.get(reverse("admin:accounts_user_changelist")).content.decode()
    assert 'value="ban"' in page


def test_email_addresses_are_read_only_in_admin() -> None:
    target = UserFactory.create(verified=False)
    address = EmailAddress.objects.get(user=target)
    desk = _desk(StaffFactory.create())
    url = reverse("admin:account_emailaddress_change", args=[address.pk])
    page = desk.get(url).content.decode()
    assert target.email in page
    assert 'name="email"' not in page
    desk.post(url, {"email": "taken-over@example.com", "user": target.pk, "verified": "on"})
    changelist = reverse("admin:account_emailaddress_changelist")
    desk.post(changelist, {"action": "make_verified", "_selected_action": [address.pk]})
    address.refresh_from_db()
    assert (address.email, address.verified) == (target.email, False)
    assert desk.get(reverse("admin:account_emailaddress_add")).status_code == 403
    assert (
        desk.post(reverse("admin:account_emailaddress_delete", args=[address.pk])).status_code
        == 403
    )
    assert EmailAddress.objects.filter(pk=address.pk).exists()


def test_a_second_factor_is_shown_without_its_secret_and_cannot_be_altered() -> None:
    target = UserFactory.create()
    secret = totp_enable(target)
    authenticator = Authenticator.objects.get(user=target)
    desk = _desk(StaffFactory.create())
    url = reverse("admin:mfa_authenticator_change", args=[authenticator.pk])
    page = desk.get(url).content.decode()
    assert target.email in page
    assert secret not in page
    assert "secret" not in page.lower()
    delete = reverse("admin:mfa_authenticator_delete", args=[authenticator.pk])
    assert desk.post(delete, {"post": "yes"}).status_code == 403
    assert Authenticator.objects.filter(pk=authenticator.pk).exists()


def _decision_records(profile: ExpertProfile) -> tuple[object, ...]:
    profile.refresh_from_db()
    return (
        profile.status,
        profile.decided_by_id,
        ExpertEvent.objects.filter(profile=profile).count(),
        OutboundEmail.objects.count(),
    )


def test_staff_cannot_decide_their_own_application_and_non_staff_decide_none() -> None:
    applicant = StaffFactory.create()
    profile = ExpertProfileFactory.create(user=applicant)
    before = _decision_records(profile)

    with pytest.raises(InvalidTransition, match="cannot decide your own application"):
        services.expert_approve(profile.pk, actor=applicant)
    with pytest.raises(InvalidTransition, match="cannot decide your own application"):
        services.expert_reject(profile.pk, actor=applicant, reason="Not good enough")
    with pytest.raises(InvalidTransition, match="Only Parley staff"):
        services.expert_approve(profile.pk, actor=UserFactory.create())
    assert _decision_records(profile) == before

    services.expert_approve(profile.pk, actor=StaffFactory.create())
    assert _decision_records(profile)[0] == ExpertStatus.APPROVED


def test_approving_ones_own_application_in_admin_says_why() -> None:
    applicant = StaffFactory.create()
    profile = ExpertProfileFactory.create(user=applicant)
    desk = _desk(applicant)
    response = desk.post(
        reverse("admin:accounts_expertprofile_changelist"),
        {"action": "approve", "_selected_action": [profile.pk]},
        follow=True,
    )
    assert "cannot decide your own application" in response.content.decode()
    profile.refresh_from_db()
    assert profile.status == ExpertStatus.PENDING
