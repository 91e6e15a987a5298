from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from allauth.account.decorators import verified_email_required as _verified_email_required
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from accounts import selectors, services
from accounts.choices import language_choices, language_name
from accounts.errors import AccountsError
from accounts.forms import ExpertApplicationForm, ProfileForm
from accounts.models import ExpertProfile, ExpertStatus, User
from accounts.security import session_passed_mfa
from accounts.unsubscribe import UnsubscribeLinkInvalid, reminders_unsubscribe_user_id

EXPERTS_PER_PAGE = 24

View = TypeVar("View", bound=Callable[..., HttpResponse])
# allauth's decorator is untyped: signed in, and a verified email address, else a page that
# says so (and sends a fresh verification email).
verified_email_required: Callable[[View], View] = _verified_email_required


def home(request: HttpRequest) -> HttpResponse:
    featured = selectors.experts_listed()[:6]
    return render(request, "home.html", {"featured": featured})


def expert_directory(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()[:100]
    language = request.GET.get("language", "")
    if language not in dict(language_choices()):
        language = ""
    page = Paginator(selectors.experts_listed(query=query, language=language), EXPERTS_PER_PAGE)
    return render(
        request,
        "accounts/expert_directory.html",
        {
            "page": page.get_page(request.GET.get("page")),
            "query": query,
            "language": language,
            "language_choices": language_choices(),
        },
    )


def expert_detail(request: HttpRequest, slug: str) -> HttpResponse:
    profile = (
        ExpertProfile.objects.select_related("user").filter(slug=slug, user__is_active=True).first()
    )
    is_owner = profile is not None and profile.user_id == request.user.pk
    # Unapproved profiles exist only for their owner (as a preview) and for staff who are in
    # a two-factor session, as everywhere staff see what the public does not.
    is_reviewer = request.user.is_staff and session_passed_mfa(request)
    if profile is None or not (profile.is_listed or is_owner or is_reviewer):
        raise Http404("No expert is listed at this address.")
    return render(
        request,
        "accounts/expert_detail.html",
        {
            "profile": profile,
            "is_owner": is_owner,
            "languages": [language_name(code) for code in profile.languages],
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def profile_edit(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    form = ProfileForm(
        request.POST or None,
        initial={
            "display_name": user.display_name,
            "time_zone": user.time_zone,
            "booking_reminders": user.booking_reminders,
        },
    )
    if request.method == "POST" and form.is_valid():
        services.user_profile_update(user, **form.cleaned_data)
        messages.success(request, "Your profile is saved.")
        return redirect("accounts:profile")
    return render(request, "accounts/profile_edit.html", {"form": form})


# No CSRF token: a mail client's one-click unsubscribe (RFC 8058) POSTs without one, and
# without a session. The signed token is the authority, and all it can do is turn reminders
# off, so a forged cross-site POST could at most do what the link's owner asked for.
@csrf_exempt
@require_http_methods(["GET", "POST"])
def reminders_unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    try:
        user_id = reminders_unsubscribe_user_id(token)
    except UnsubscribeLinkInvalid:
        return _unsubscribe_invalid(request)
    person = User.objects.filter(pk=user_id).first()
    if person is None:
        return _unsubscribe_invalid(request)
    if request.method == "POST":
        services.user_reminders_off(person.pk)
        return render(request, "accounts/reminders_off.html", {"person": person})
    return render(
        request,
        "accounts/reminders_unsubscribe.html",
        {"person": person, "already_off": not person.booking_reminders},
    )


def _unsubscribe_invalid(request: HttpRequest) -> HttpResponse:
    return render(request, "accounts/reminders_unsubscribe_invalid.html", status=400)


@verified_email_required
@require_http_methods(["GET", "POST"])
def expert_apply(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    profile = selectors.expert_profile_of(user)
    form = ExpertApplicationForm(
        request.POST or None, initial=ExpertApplicationForm.initial_for(user, profile)
    )
    if request.method == "POST" and form.is_valid():
        try:
            profile = services.expert_profile_submit(user, **form.cleaned_data)
        except AccountsError as error:
            messages.error(request, str(error))
        else:
            if profile.status == ExpertStatus.PENDING:
                messages.success(
                    request, "Application sent. Staff review it and you will get an email."
                )
            else:
                messages.success(request, "Your expert profile is saved.")
            return redirect("accounts:expert_apply")
    return render(request, "accounts/expert_apply.html", {"form": form, "profile": profile})


def _user(request: HttpRequest) -> User:
    # The decorators above guarantee a signed-in user; this narrows the type for mypy.
    assert isinstance(request.user, User)  # noqa: S101
    return request.user
