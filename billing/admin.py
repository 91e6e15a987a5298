"""Staff's view of money: every payment with its events, commands and settlement, read-only,
and one action that changes anything — a refund, which goes through billing's service."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from accounts.admin import ReadOnlyAdmin, ReadOnlyInline
from accounts.models import User
from billing import services
from billing.errors import BillingError
from billing.forms import RefundForm
from billing.models import (
    Payment,
    PaymentCommand,
    PaymentEvent,
    PayoutAccount,
    Settlement,
    WebhookEvent,
)
from billing.pricing import format_money


class PaymentEventInline(ReadOnlyInline):
    model = PaymentEvent
    fields = ("created_at", "kind", "amount_minor", "actor", "data")
    readonly_fields = fields


class PaymentCommandInline(ReadOnlyInline):
    model = PaymentCommand
    fields = (
        "created_at",
        "kind",
        "amount_minor",
        "reason",
        "state",
        "attempts",
        "provider_ref",
        "last_error",
        "finished_at",
    )
    readonly_fields = fields


class SettlementInline(ReadOnlyInline):
    model = Settlement
    fields = (
        "rule",
        "amount_minor",
        "platform_fee_minor",
        "payout_minor",
        "explanation",
        "inputs",
        "payout_due_at",
        "payout_held",
    )
    readonly_fields = fields


@admin.register(Payment)
class PaymentAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "description",
        "payer",
        "state",
        "hold",
        "charged",
        "refunded",
        "provider",
        "created_at",
    )
    list_filter = ("state", "provider", "currency")
    search_fields = ("payer__email", "payee__email", "description", "intent_id")
    list_select_related = ("payer",)
    inlines = [SettlementInline, PaymentCommandInline, PaymentEventInline]
    readonly_fields = [field.name for field in Payment._meta.fields] + ["refund_link"]

    @admin.display(description="Hold")
    def hold(self, payment: Payment) -> str:
        return format_money(payment.amount_minor, payment.currency)

    @admin.display(description="Charged")
    def charged(self, payment: Payment) -> str:
        return format_money(payment.captured_minor, payment.currency)

    @admin.display(description="Refunded")
    def refunded(self, payment: Payment) -> str:
        return format_money(payment.refunded_minor, payment.currency)

    @admin.display(description="Refund")
    def refund_link(self, payment: Payment) -> str:
        if payment.refundable_minor <= 0:
            return "Nothing left to refund."
        return format_html(
            '<a class="button" href="{}">Refund…</a> up to {}',
            reverse("admin:billing_payment_refund", args=[payment.pk]),
            format_money(payment.refundable_minor, payment.currency),
        )

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:payment_id>/refund/",
                self.admin_site.admin_view(self.refund_view),
                name="billing_payment_refund",
            ),
            *super().get_urls(),
        ]

    def refund_view(self, request: HttpRequest, payment_id: int) -> HttpResponse:
        """A full or partial refund, with the reason the client and staff will see."""
        if not request.user.has_perm("billing.change_payment"):
            raise PermissionDenied("Refunds need the permission to change payments.")
        assert isinstance(request.user, User)  # noqa: S101
        payment = get_object_or_404(Payment, pk=payment_id)
        form = RefundForm(request.POST or None, currency=payment.currency)
        if request.method == "POST" and form.is_valid():
            try:
                with transaction.atomic():
                    services.payment_refund(
                        payment.pk,
                        amount_minor=form.cleaned_data["amount"],
                        currency=payment.currency,
                        reason=form.cleaned_data["reason"],
                        actor=request.user,
                    )
            except BillingError as error:
                form.add_error("amount", str(error))
            else:
                self.message_user(
                    request,
                    f"Refund of {format_money(form.cleaned_data['amount'], payment.currency)} "
                    "recorded; it is sent to the provider now.",
                    messages.SUCCESS,
                )
                return redirect("admin:billing_payment_change", payment.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Refund payment {payment.pk}",
            "opts": self.model._meta,
            "payment": payment,
            "refundable": format_money(payment.refundable_minor, payment.currency),
            "form": form,
        }
        status = 400 if request.method == "POST" else 200
        return TemplateResponse(
            request, "admin/billing/payment/refund.html", context, status=status
        )


@admin.register(PaymentCommand)
class PaymentCommandAdmin(ReadOnlyAdmin):
    list_display = ("pk", "payment", "kind", "amount_minor", "state", "attempts", "created_at")
    list_filter = ("state", "kind")
    list_select_related = ("payment",)
    readonly_fields = [field.name for field in PaymentCommand._meta.fields]


@admin.register(WebhookEvent)
class WebhookEventAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "type", "received_at", "processed_at", "attempts", "last_error")
    list_filter = ("type", "provider")
    search_fields = ("event_id",)
    readonly_fields = [field.name for field in WebhookEvent._meta.fields]


@admin.register(PayoutAccount)
class PayoutAccountAdmin(ReadOnlyAdmin):
    list_display = ("user", "account_id", "details_submitted", "payouts_enabled", "updated_at")
    list_filter = ("payouts_enabled",)
    search_fields = ("user__email", "account_id")
    list_select_related = ("user",)
    readonly_fields = [field.name for field in PayoutAccount._meta.fields]
