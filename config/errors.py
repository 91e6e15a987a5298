"""Error pages that say what happened and what to do next, in the product's layout."""

from __future__ import annotations

import sys

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import get_template

from config.postgresql.errors import DATABASE_ERRORS


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/400.html", status=400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    # PermissionDenied("…") carries a sentence for the person; a bare one gets the default.
    reason = str(exception) if exception is not None and str(exception) else ""
    return render(request, "errors/403.html", {"reason": reason}, status=403)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return render(request, "errors/404.html", status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls this inside the `except` of the error that escaped the view or a middleware.
    if isinstance(sys.exc_info()[1], DATABASE_ERRORS):
        return database_unavailable(request)
    # No request context: whatever broke may be in a context processor or the database.
    return HttpResponse(get_template("errors/500.html").render(), status=500)


UNAVAILABLE = (
    "Parley is restarting part of itself and could not finish this. Please try again in a few"
    " seconds."
)
RETRY_AFTER_SECONDS = 5


def database_unavailable(request: HttpRequest) -> HttpResponse:
    """PostgreSQL is down or restarting (a failover, a restart): 503 with Retry-After, not a
    500. The person is told to try again in a moment; a provider's webhook delivery is
    answered with a status that makes it try again (Stripe retries anything not 2xx), and the
    log says "Service Unavailable" rather than "Internal Server Error"."""
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        response: HttpResponse = JsonResponse({"error": UNAVAILABLE}, status=503)
    else:
        # No request context, as for a 500: the context processors need the database.
        page = get_template("errors/503.html").render({"reason": UNAVAILABLE})
        response = HttpResponse(page, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    return render(request, "errors/403_csrf.html", status=403)


TOO_MANY = "You have done this too many times in a short while. Wait a few minutes, then try again."


def too_many_requests(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """A rate limit said no (config/ratelimits.py, and allauth's, through handler429): 429 with
    what to do; the page's fetch calls get the same sentence as JSON."""
    if request.get_preferred_type(["text/html", "application/json"]) == "application/json":
        return JsonResponse({"error": TOO_MANY}, status=429)
    return render(request, "errors/429.html", {"reason": TOO_MANY}, status=429)
