"""Moderation's additions to accounts' user admin, made through accounts' hook: an account is
switched off only by a ban (a staff action with a reason), never by editing `is_active`."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from moderation.models import StaffAction, StaffActionKind

pytestmark = pytest.mark.django_db


def _desk() -> Client:
    staff = StaffFactory.create()
    browser = Client()
    login_with_mfa(browser, staff, totp_enable(staff))
    return browser


def test_is_active_is_read_only_on_the_user_page() -> None:
    target = UserFactory.create()
    desk = _desk()
    url = reverse("admin:accounts_user_change", args=[target.pk])
    assert b'name="is_active"' not in desk.get(url).content
    desk.post(
        url,
        {"display_name": target.display_name, "time_zone": target.time_zone, "is_staff": ""},
    )
    assert User.objects.get(pk=target.pk).is_active


def test_the_ban_action_bans_with_its_reason_and_the_unban_action_lifts_it() -> None:
    target = UserFactory.create()
    desk = _desk()
    changelist = reverse("admin:accounts_user_changelist")
    asked = desk.post(changelist, {"action": "ban", "_selected_action": [target.pk]})
    assert "Suspends" in asked.content.decode()

    desk.post(
        changelist,
        {"action": "ban", "_selected_action": [target.pk], "confirm": "1", "reason": "Spam"},
    )
    assert not User.objects.get(pk=target.pk).is_active
    desk.post(
        changelist,
        {"action": "unban", "_selected_action": [target.pk], "confirm": "1", "reason": "Appeal"},
    )
    assert User.objects.get(pk=target.pk).is_active
    assert list(
        StaffAction.objects.filter(subject=target).order_by("pk").values_list("kind", "reason")
    ) == [(StaffActionKind.USER_BAN, "Spam"), (StaffActionKind.USER_UNBAN, "Appeal")]
