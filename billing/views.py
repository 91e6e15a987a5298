"""The pay page (local test card or Stripe's Payment Element), the browser's return from
Stripe, the Stripe webhook endpoint, and the expert's payout account.

These views call the payment provider, so they run outside the request transaction
(ATOMIC_REQUESTS): no network call may hold database locks.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import User
from accounts.selectors import expert_profile_of
from billing import selectors, services
from billing.errors import BillingError
from billing.forms import TestCardForm
from billing.gateways.base import BadSignature, GatewayError
from billing.gateways.local import DECLINE_NUMBERS, TEST_CARD
from billing.models import Payment, PaymentState, PayoutAccount

logger = logging.getLogger(__name__)


def _next_url(request: HttpRequest) -> str:
    candidate = request.GET.get("next") or request.POST.get("next") or ""
    if url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse("home")


def _own_payment(request: HttpRequest, payment_id: int) -> Payment:
    payment = get_object_or_404(Payment, pk=payment_id)
    if payment.payer_id != request.user.pk:
        raise PermissionDenied("This payment belongs to another account.")
    return payment


@transaction.non_atomic_requests
@login_required
@require_http_methods(["GET", "POST"])
def pay(request: HttpRequest, payment_id: int) -> HttpResponse:
    payment = _own_payment(request, payment_id)
    next_url = _next_url(request)
    context: dict[str, object] = {"payment": payment, "next": next_url}
    if payment.state not in services.UNPAID_STATES or hasattr(payment, "settlement"):
        return render(request, "billing/pay.html", context)
    if payment.provider == "local":
        form = TestCardForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                payment = services.payment_local_card(
                    payment.pk, card_number=form.cleaned_data["number"]
                )
            except BillingError as error:
                form.add_error(None, str(error))
            else:
                return _paid(request, payment, next_url)
        context.update(
            form=form,
            test_card=TEST_CARD,
            decline_numbers=DECLINE_NUMBERS,
            saves_card=payment.hold_at is not None and payment.state == PaymentState.PENDING,
        )
        status = 400 if request.method == "POST" else 200
        return render(request, "billing/pay.html", context, status=status)
    if request.method == "POST":
        return HttpResponseBadRequest("Card payments at Stripe are confirmed in the browser.")
    try:
        checkout = services.payment_checkout(payment.pk)
    except (BillingError, GatewayError) as error:
        context["provider_error"] = str(error)
        return render(request, "billing/pay.html", context, status=502)
    context.update(
        checkout=checkout,
        publishable_key=settings.STRIPE_PUBLISHABLE_KEY,
        return_url=request.build_absolute_uri(
            reverse("billing:pay_return", args=[payment.pk]) + "?" + urlencode({"next": next_url})
        ),
    )
    return render(request, "billing/pay.html", context)


def _paid(request: HttpRequest, payment: Payment, next_url: str) -> HttpResponse:
    if payment.state == PaymentState.CARD_SAVED:
        messages.success(
            request,
            f"Card saved. The hold is placed on {payment.hold_at:%d %B %H:%M} UTC, "
            "a day before the session; you are charged only for the call.",
        )
    elif payment.state == PaymentState.AUTHORIZED and not hasattr(payment, "settlement"):
        messages.success(request, "Paid: the hold is placed. You are charged only for the call.")
    elif payment.state == PaymentState.AUTHORIZED:
        messages.error(
            request,
            "The card was authorized, but the booking had already ended; the hold is released.",
        )
    return redirect(next_url)


@transaction.non_atomic_requests
@login_required
def pay_return(request: HttpRequest, payment_id: int) -> HttpResponse:
    """Stripe sends the browser back here after the card step (3-D Secure included). The
    query string is not trusted: the state is read from Stripe itself."""
    payment = _own_payment(request, payment_id)
    try:
        payment = services.payment_sync(payment.pk, source="browser_return")
    except (BillingError, GatewayError) as error:
        logger.warning("payment %s: sync after return failed: %s", payment.pk, error)
        messages.error(
            request, "We could not confirm the payment with Stripe yet; this page updates soon."
        )
        return redirect(_next_url(request))
    if payment.state in services.UNPAID_STATES and payment.last_error:
        messages.error(request, f"The card was not accepted: {payment.last_error}")
        query = urlencode({"next": _next_url(request)})
        return redirect(reverse("billing:pay", args=[payment.pk]) + "?" + query)
    return _paid(request, payment, _next_url(request))


@csrf_exempt
@transaction.non_atomic_requests
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Stripe's events: verified on the raw body, stored once, processed after commit."""
    try:
        event = services.webhook_receive(
            "stripe", request.body, request.headers.get("Stripe-Signature", "")
        )
    except BadSignature as error:
        return HttpResponseBadRequest(f"Webhook refused: {error}", content_type="text/plain")
    return HttpResponse("stored" if event else "duplicate", content_type="text/plain")


def _expert(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101
    profile = expert_profile_of(user)
    if profile is None or profile.status != "approved":
        raise PermissionDenied("Payouts are for approved experts.")
    return user


@transaction.non_atomic_requests
@login_required
@require_http_methods(["GET", "POST"])
def payouts(request: HttpRequest) -> HttpResponse:
    user = _expert(request)
    if request.method == "POST":
        here = request.build_absolute_uri(reverse("billing:payouts"))
        try:
            url = services.payout_account_link(
                user, refresh_url=here, return_url=here + "?returned=1"
            )
        except GatewayError as error:
            messages.error(request, f"The payment provider did not answer: {error}")
            return redirect("billing:payouts")
        return redirect(url)
    account = PayoutAccount.objects.filter(user=user).first()
    if account is not None and request.GET.get("returned"):
        try:
            account = services.payout_account_refresh(user)
        except GatewayError as error:
            messages.error(request, f"The payment provider did not answer: {error}")
    return render(
        request,
        "billing/payouts.html",
        {
            "account": account,
            "rows": [
                (
                    settlement,
                    next(
                        (c for c in settlement.payment.commands.all() if c.kind == "transfer"), None
                    ),
                )
                for settlement in selectors.settlements_of_payee(user)
            ],
            "fee_percent": settings.PLATFORM_FEE_PERCENT,
            "delay_hours": settings.PAYOUT_DELAY_HOURS,
        },
    )
