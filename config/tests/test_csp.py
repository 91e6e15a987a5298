"""A Content-Security-Policy on every page (issue 16, security, low), strict for scripts (our own
ES modules only, and Stripe.js when Stripe takes payments), and templates that keep to it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse

from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa

ROOT = Path(__file__).resolve().parents[2]


def _policy(header: str) -> dict[str, list[str]]:
    directives = (part.strip().split() for part in header.split(";") if part.strip())
    return {name: values for name, *values in directives}


@pytest.mark.django_db
@pytest.mark.parametrize("page", ["home", "account_login", "account_signup"])
def test_public_pages_carry_a_policy_that_allows_only_our_scripts(page: str) -> None:
    response = Client().get(reverse(page))
    assert response.status_code == 200
    policy = _policy(response["Content-Security-Policy"])
    assert policy["script-src"] == ["'self'"]
    assert policy["default-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["script-src"]
    assert "'self'" in policy["connect-src"], "the room's WebSocket and fetches"


@pytest.mark.django_db
def test_signed_in_pages_and_admin_carry_it_too(client: Client) -> None:
    client.force_login(UserFactory.create())
    assert "script-src 'self'" in client.get(reverse("accounts:profile"))["Content-Security-Policy"]
    staff = StaffFactory.create()
    admin = Client()
    login_with_mfa(admin, staff, totp_enable(staff))
    response = admin.get("/admin/")
    assert response.status_code == 200
    assert "script-src 'self'" in response["Content-Security-Policy"]


def _policy_with(**env: str) -> dict[str, list[str]]:
    code = (
        "from django.conf import settings as s; "
        "print(repr(s.CONTENT_SECURITY_POLICY['DIRECTIVES']))"
    )
    result = subprocess.run(  # noqa: S603
        [sys.executable, "manage.py", "shell", "-c", code],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], "PARLEY_VAR_DIR": os.environ["PARLEY_VAR_DIR"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    import ast

    return dict(ast.literal_eval(result.stdout.strip().splitlines()[-1]))


def test_with_the_stripe_provider_the_policy_lets_stripe_js_work() -> None:
    policy = _policy_with(DEBUG="1", STRIPE_SECRET_KEY="sk_test_x")
    assert "https://js.stripe.com" in policy["script-src"]
    assert {"https://js.stripe.com", "https://hooks.stripe.com"} <= set(policy["frame-src"])
    assert "https://api.stripe.com" in policy["connect-src"]
    # The payouts form redirects to Stripe's onboarding.
    assert "https://connect.stripe.com" in policy["form-action"]
    assert _policy_with(DEBUG="1")["frame-src"] == ["'none'"]


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
HANDLER = re.compile(r"\son[a-z]+\s*=", re.I)
JS_URL = re.compile(r"javascript:", re.I)


@pytest.mark.parametrize(
    "template", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "templates").rglob("*.html"))
)
def test_no_template_has_inline_script_the_policy_would_block(template: str) -> None:
    text = (ROOT / template).read_text()
    assert not INLINE_SCRIPT.search(text), "move the script to static/js"
    assert not HANDLER.search(text), "use addEventListener in static/js"
    assert not JS_URL.search(text)
