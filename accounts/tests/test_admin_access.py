from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa

pytestmark = pytest.mark.django_db


def test_anonymous_visitor_is_sent_to_the_product_login_and_back(client: Client) -> None:
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))
    assert "next=%2Fadmin%2F" in response["Location"]


def test_admin_own_login_form_redirects_to_the_product_login(client: Client) -> None:
    response = client.get("/admin/login/?next=/admin/accounts/user/")
    assert response.status_code == 302
    assert response["Location"] == (
        reverse("account_login") + "?next=%2Fadmin%2Faccounts%2Fuser%2F"
    )


def test_non_staff_user_is_refused_with_a_page_that_says_why(client: Client) -> None:
    client.force_login(UserFactory.create())
    response = client.get("/admin/")
    assert response.status_code == 403
    assert "This area is for Parley staff." in response.content.decode()


def test_staff_without_two_factor_is_sent_to_set_it_up(client: Client) -> None:
    client.force_login(StaffFactory.create())
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"] == reverse("mfa_activate_totp")


def test_staff_session_without_second_factor_must_confirm_it(client: Client) -> None:
    staff = StaffFactory.create()
    totp_enable(staff)
    client.force_login(staff)
    response = client.get("/admin/accounts/user/")
    assert response.status_code == 302
    assert response["Location"] == (
        reverse("mfa_reauthenticate") + "?next=%2Fadmin%2Faccounts%2Fuser%2F"
    )


def test_staff_who_signed_in_with_password_and_code_reaches_admin(client: Client) -> None:
    staff = StaffFactory.create()
    secret = totp_enable(staff)
    login_with_mfa(client, staff, secret)
    response = client.get("/admin/")
    assert response.status_code == 200
    assert "Parley staff" in response.content.decode()


def test_wrong_totp_code_keeps_staff_out(client: Client) -> None:
    staff = StaffFactory.create()
    totp_enable(staff)
    client.post(
        reverse("account_login"), {"login": staff.email, "password": "correct-horse-battery-staple"}
    )
    response = client.post(reverse("mfa_authenticate"), {"code": "000000"})
    assert response.status_code == 200
    assert "Incorrect code" in response.content.decode()
    assert client.get("/admin/").status_code == 302
