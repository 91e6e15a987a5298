"""Who may enter staff areas: active staff, from a session that passed two-factor auth."""

from __future__ import annotations

from allauth.account.authentication import get_authentication_records
from allauth.mfa.models import Authenticator
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode


def session_passed_mfa(request: HttpRequest) -> bool:
    """True when this session's sign-in (or a later re-check) included a second factor."""
    records: list[dict[str, object]] = get_authentication_records(request, request.user)
    return any(record.get("method") == "mfa" for record in records)


def user_has_totp(request: HttpRequest) -> bool:
    return bool(
        Authenticator.objects.filter(user_id=request.user.pk, type=Authenticator.Type.TOTP).exists()
    )


def staff_gate_redirect(request: HttpRequest) -> HttpResponse | None:
    """None when the request may proceed into a staff area, else where to send the person.

    Anonymous visitors go to the product's login (which asks for the second factor) and come
    back. Signed-in non-staff are refused outright: a login page they are already past would
    send them straight back here.
    """
    user = request.user
    if not user.is_authenticated:
        query = urlencode({"next": request.get_full_path()})
        return redirect(f"{reverse('account_login')}?{query}")
    if not (user.is_active and user.is_staff):
        raise PermissionDenied("This area is for Parley staff.")
    if not user_has_totp(request):
        messages.warning(
            request,
            "Staff accounts need two-factor authentication. Set up an authenticator app "
            "below, then open the admin again.",
        )
        return redirect("mfa_activate_totp")
    if not session_passed_mfa(request):
        query = urlencode({"next": request.get_full_path()})
        return redirect(f"{reverse('mfa_reauthenticate')}?{query}")
    return None
