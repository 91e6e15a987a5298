"""The pay page (local test card or Stripe's Payment Element), the browser's return from
Stripe, the Stripe webhook endpoint, and the expert's payout account.

These views call the payment provider, so they run outside the request transaction
(ATOMIC_REQUESTS): no network call may hold database locks.
"""

from __future__ import annotations

import csv
import logging
import zoneinfo
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
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
from billing.models import Payment, PaymentState, PayoutAccount, Settlement
from billing.pricing import FREE_SECONDS, format_money

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


@dataclass(frozen=True)
class _Ended:
    """Why a payment takes no card now, for its payer; and whether to offer another time."""

    message: str
    pick_another_time: bool = False


def _not_payable(payment: Payment) -> _Ended | None:
    settlement = Settlement.objects.filter(payment=payment).first()
    if payment.state == PaymentState.CAPTURED:
        charged = format_money(payment.captured_minor, payment.currency)
        return _Ended(f"This booking was already charged ({charged}); there is nothing to pay.")
    if settlement is not None and settlement.amount_minor == 0:
        reason = str(settlement.inputs.get("reason") or "the booking ended")
        return _Ended(
            f"This booking is no longer waiting for payment ({reason}): its time was released "
            "and nothing was charged.",
            pick_another_time=True,
        )
    if payment.state == PaymentState.CANCELED:
        return _Ended(
            "This booking was released before it was paid; nothing was charged.",
            pick_another_time=True,
        )
    if settlement is not None:
        return _Ended("This booking has ended; there is nothing more to pay.")
    if payment.state == PaymentState.AUTHORIZED:
        return _Ended("This booking is paid: the hold is placed. There is nothing more to pay.")
    return None


def _another_time_url(payment: Payment) -> str:
    """Where the payer picks another time: the expert's page, with their offerings."""
    profile = expert_profile_of(payment.payee)
    if profile is None or profile.status != "approved":
        return reverse("accounts:expert_directory")
    return reverse("accounts:expert_detail", args=[profile.slug])


@transaction.non_atomic_requests
@login_required
@require_http_methods(["GET", "POST"])
def pay(request: HttpRequest, payment_id: int) -> HttpResponse:
    payment = _own_payment(request, payment_id)
    next_url = _next_url(request)
    user = _user(request)
    context: dict[str, object] = {
        "payment": payment,
        "subject": selectors.payment_subject(payment, user),
        "next": next_url,
        "zone": timezone.get_current_timezone_name(),
        "free_seconds": FREE_SECONDS,
        # A failed earlier attempt is told once: a new attempt's own error replaces it.
        "last_error": payment.last_error if payment.state in services.UNPAID_STATES else "",
    }
    ended = _not_payable(payment)
    if ended is not None:
        context.update(
            ended=ended.message,
            another_time_url=_another_time_url(payment) if ended.pick_another_time else "",
            receipt=payment.state == PaymentState.CAPTURED,
        )
        # A card sent to a payment that takes none is refused with the reason, not ignored.
        status = 409 if request.method == "POST" else 200
        return render(request, "billing/pay.html", context, status=status)
    if payment.provider == "local":
        form = TestCardForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                payment = services.payment_local_card(
                    payment.pk, card_number=form.cleaned_data["number"]
                )
            except BillingError as error:
                form.add_error(None, str(error))
                payment.refresh_from_db()
            else:
                return _paid(request, payment, next_url)
        if request.method == "POST":
            context["last_error"] = ""
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


def _user(request: HttpRequest) -> User:
    user = request.user
    assert isinstance(user, User)  # noqa: S101
    return user


def _paid(request: HttpRequest, payment: Payment, next_url: str) -> HttpResponse:
    if payment.state == PaymentState.CARD_SAVED:
        messages.success(
            request,
            f"Card saved. The hold is placed on {_local(payment.hold_at)}, "
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


def _local(moment: datetime | None) -> str:
    """A moment in the viewer's zone, the zone named: "7 December 10:00 (Europe/Berlin)"."""
    if moment is None:
        return ""
    local = timezone.localtime(moment)
    return f"{local.day} {local:%B %H:%M} ({timezone.get_current_timezone_name()})"


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
        # The pay page says the card's error itself, once.
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
    user = _user(request)
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
    earnings = selectors.earnings_of_payee(user)
    return render(
        request,
        "billing/payouts.html",
        {
            "account": account,
            "months": selectors.earnings_by_month(earnings),
            "zone": timezone.get_current_timezone_name(),
            "fee_percent": settings.PLATFORM_FEE_PERCENT,
            "delay_hours": settings.PAYOUT_DELAY_HOURS,
        },
    )


@login_required
def payouts_csv(request: HttpRequest) -> HttpResponse:
    """The expert's earnings as a spreadsheet: one row per settled session, amounts in the
    currency's major units, times in the expert's own zone (named in the headers)."""
    user = _expert(request)
    zone = zoneinfo.ZoneInfo(user.time_zone)
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    filename = f"parley-earnings-{timezone.localdate(timezone=zone):%Y-%m-%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    writer = csv.writer(response)
    writer.writerow(
        [
            "Month",
            "Session",
            "Client",
            f"Session start ({user.time_zone})",
            f"Settled ({user.time_zone})",
            "Currency",
            "Charged",
            "Refunded",
            "Platform fee",
            "Your share",
            "Status",
        ]
    )
    with timezone.override(zone):
        for earning in selectors.earnings_of_payee(user):
            settled = timezone.localtime(earning.settled_at)
            starts = timezone.localtime(earning.starts_at) if earning.starts_at else None

            def amount(minor: int, currency: str = earning.currency) -> str:
                return format_money(minor, currency).removesuffix(f" {currency}")

            writer.writerow(
                [
                    f"{settled:%Y-%m}",
                    _csv_safe(earning.session),
                    _csv_safe(earning.client),
                    f"{starts:%Y-%m-%d %H:%M}" if starts else "",
                    f"{settled:%Y-%m-%d %H:%M}",
                    earning.currency,
                    amount(earning.charged_minor),
                    amount(earning.refunded_minor),
                    amount(earning.fee_minor),
                    amount(earning.share_minor),
                    earning.status,
                ]
            )
    return response


def _csv_safe(text: str) -> str:
    """A cell a spreadsheet shows as text: a leading = + - @ would make it a formula (a title
    or a name is typed by someone else)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@login_required
def receipt(request: HttpRequest, payment_id: int) -> HttpResponse:
    """The printable receipt of a charged payment: for its payer, and staff."""
    payment = get_object_or_404(Payment.objects.select_related("payer", "payee"), pk=payment_id)
    user = _user(request)
    if payment.payer_id != user.pk and not user.is_staff:
        raise PermissionDenied("This receipt belongs to another account.")
    facts = selectors.receipt_of(payment)
    if facts is None:
        raise Http404("There is no receipt: nothing has been charged for this booking.")
    return render(request, "billing/receipt.html", {"receipt": facts})
