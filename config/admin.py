"""The admin site: staff only, and only from a session that passed two-factor authentication."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import urlencode

from accounts.security import staff_gate_redirect

View = TypeVar("View", bound=Callable[..., HttpResponse])


class ParleyAdminSite(admin.AdminSite):
    site_header = "Parley staff"
    site_title = "Parley staff"
    index_title = "Operations"

    def admin_view(self, view: View, cacheable: bool = False) -> View:  # type: ignore[override]
        inner = super().admin_view(view, cacheable)

        def gated(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            response = staff_gate_redirect(request)
            return response if response is not None else inner(request, *args, **kwargs)

        return cast(View, gated)

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        # Admin's own login form would skip the two-factor step, so everyone signs in through
        # the product's login page and comes back here.
        next_url = request.GET.get("next") or reverse("admin:index")
        return redirect(f"{reverse('account_login')}?{urlencode({'next': next_url})}")
