"""The forms staff fill in on the moderation desk: the reason of a live action, a dispute's
decision, a report's resolution."""

from __future__ import annotations

from typing import Any

from django import forms

from billing.forms import refund_minor_units
from moderation.services import Outcome


class StaffReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Kept with the action in the room's story and the staff log.",
    )


class LiveActionForm(StaffReasonForm):
    ACTIONS = (
        ("end", "End the room for everyone"),
        ("remove", "Remove this participant"),
        ("ban", "Ban this user (suspends the account everywhere)"),
    )
    action = forms.ChoiceField(choices=ACTIONS)
    user = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("action") in ("remove", "ban") and not data.get("user"):
            raise forms.ValidationError("Choose whom to remove or ban.")
        return data


class DisputeDecisionForm(forms.Form):
    outcome = forms.ChoiceField(
        choices=(
            (Outcome.REFUND_FULL, "Refund in full (everything still refundable)"),
            (Outcome.REFUND_PARTIAL, "Refund part of it"),
            (Outcome.REJECT, "Reject: the charge stands"),
        ),
        widget=forms.RadioSelect,
    )
    amount = forms.DecimalField(
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=3,
        help_text="For a partial refund, in the payment's currency, for example 12.50.",
    )
    note = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="The client reads this with the outcome, by email and on the session's page.",
    )

    def __init__(self, *args: Any, currency: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.currency = currency

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        data["refund_minor"] = None
        if data.get("outcome") == Outcome.REFUND_PARTIAL:
            if data.get("amount") is None:
                self.add_error("amount", "Give the amount of a partial refund.")
            else:
                try:
                    data["refund_minor"] = refund_minor_units(data["amount"], self.currency)
                except forms.ValidationError as error:
                    self.add_error("amount", error)
        return data


class ReportResolutionForm(forms.Form):
    resolution = forms.CharField(
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What you found and what was done (for staff; the reporter is not emailed).",
    )
