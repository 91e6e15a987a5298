"""User and ExpertProfile have one admin each, accounts'; the apps above add to it through its
hook (`ExtensibleAdmin.extend`) instead of replacing it, whatever order the apps load in."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.db.models import QuerySet, Value
from django.http import HttpRequest
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.admin import AdminExtension, ExpertProfileAdmin, ExtensibleAdmin, UserAdmin
from accounts.models import ExpertProfile, User
from accounts.tests.factories import (
    ExpertProfileFactory,
    StaffFactory,
    UserFactory,
    totp_enable,
)
from accounts.tests.helpers import login_with_mfa

pytestmark = pytest.mark.django_db


def test_each_account_model_has_accounts_own_admin_on_the_site() -> None:
    assert type(admin.site.get_model_admin(User)) is UserAdmin
    assert type(admin.site.get_model_admin(ExpertProfile)) is ExpertProfileAdmin


@admin.display(description="Marked")
def _marked(profile: ExpertProfile) -> str:
    return f"marked {getattr(profile, 'mark', '?')}"


@admin.action(description="Touch selected", permissions=["change"])
def _touch(model_admin: Any, request: HttpRequest, queryset: QuerySet[ExpertProfile]) -> None:
    return None


def _with_mark(profiles: QuerySet[Any]) -> QuerySet[Any]:
    marked: QuerySet[Any] = profiles.annotate(mark=Value("yes"))
    return marked


class _ProbeAdmin(ExtensibleAdmin):
    list_display = ("user",)
    readonly_fields = ("headline",)


def _request(user: User) -> HttpRequest:
    request = RequestFactory().get("/")
    request.user = user
    return request


def test_an_extension_adds_its_column_panel_action_and_annotation() -> None:
    _ProbeAdmin.extend(
        AdminExtension(
            app="probe",
            columns=(_marked,),
            panels=("bio", _marked),
            actions=(_touch,),
            annotate=_with_mark,
        )
    )
    model_admin = _ProbeAdmin(ExpertProfile, admin.AdminSite())
    ExpertProfileFactory.create()
    request = _request(StaffFactory.create())

    assert tuple(model_admin.get_list_display(request)) == ("user", _marked)
    assert tuple(model_admin.get_readonly_fields(request)) == ("headline", "bio", _marked)
    assert "_touch" in model_admin.get_actions(request)
    assert _marked(model_admin.get_queryset(request).get()) == "marked yes"


def test_an_extension_action_needs_the_permission_it_names() -> None:
    _ProbeAdmin.extend(AdminExtension(app="probe", actions=(_touch,)))
    model_admin = _ProbeAdmin(ExpertProfile, admin.AdminSite())
    viewer = StaffFactory.create(is_superuser=False)
    viewer.user_permissions.add(Permission.objects.get(codename="view_expertprofile"))
    viewer = User.objects.get(pk=viewer.pk)  # permissions are cached on the instance

    assert "_touch" not in model_admin.get_actions(_request(viewer))


def test_extending_again_under_one_app_replaces_and_subclasses_keep_their_own() -> None:
    _ProbeAdmin.extend(AdminExtension(app="probe", columns=(_marked,)))
    _ProbeAdmin.extend(AdminExtension(app="probe"))
    model_admin = _ProbeAdmin(ExpertProfile, admin.AdminSite())

    assert tuple(model_admin.get_list_display(_request(StaffFactory.create()))) == ("user",)
    assert "probe" not in ExpertProfileAdmin.extensions
    assert "probe" not in UserAdmin.extensions


def test_a_panel_a_fixed_fieldset_does_not_show_gets_its_own_section() -> None:
    class _ProbeUserAdmin(UserAdmin):
        pass

    _ProbeUserAdmin.extend(AdminExtension(app="probe", title="Probe notes", panels=(_marked,)))
    model_admin = _ProbeUserAdmin(User, admin.AdminSite())
    target = UserFactory.create()
    fieldsets = model_admin.get_fieldsets(_request(StaffFactory.create()), target)

    assert fieldsets[-1] == ("Probe notes", {"fields": [_marked]})


def test_staff_who_are_not_superusers_cannot_change_who_is_staff() -> None:
    moderator = StaffFactory.create(is_superuser=False)
    moderator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_user", "change_user"])
    )
    colleague = StaffFactory.create(is_superuser=False)
    browser = Client()
    login_with_mfa(browser, moderator, totp_enable(moderator))
    page = browser.get(reverse("admin:accounts_user_change", args=[moderator.pk])).content
    assert b'name="is_superuser"' not in page
    assert b'name="is_staff"' not in page

    for target in (moderator, colleague):
        browser.post(
            reverse("admin:accounts_user_change", args=[target.pk]),
            {
                "display_name": target.display_name,
                "time_zone": target.time_zone,
                "is_active": "on",
                "is_superuser": "on",
            },
        )
        target.refresh_from_db()
        assert (target.is_staff, target.is_superuser) == (True, False)
