from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

from django import forms
from django.utils import timezone

from accounts.choices import CURRENCIES


def _luhn_ok(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


class TestCardForm(forms.Form):
    """The local provider's card form: checked as a real card form would check it."""

    # The autocomplete tokens let the browser (or a password manager) fill the card in.
    name = forms.CharField(
        max_length=100,
        required=False,
        label="Name on card",
        widget=forms.TextInput(attrs={"autocomplete": "cc-name"}),
    )
    number = forms.CharField(
        max_length=23,
        label="Card number",
        widget=forms.TextInput(attrs={"autocomplete": "cc-number", "inputmode": "numeric"}),
    )
    expiry = forms.CharField(
        max_length=7,
        label="Expiry (MM/YY)",
        widget=forms.TextInput(attrs={"autocomplete": "cc-exp", "placeholder": "MM/YY"}),
    )
    cvc = forms.CharField(
        max_length=4,
        label="CVC",
        widget=forms.TextInput(attrs={"autocomplete": "cc-csc", "inputmode": "numeric"}),
    )

    def clean_number(self) -> str:
        number = re.sub(r"[\s-]", "", self.cleaned_data["number"])
        if not number.isdigit() or not 12 <= len(number) <= 19:
            raise forms.ValidationError("A card number is 12 to 19 digits.")
        if not _luhn_ok(number):
            raise forms.ValidationError("That card number has a typo (its check digit is wrong).")
        return number

    def clean_expiry(self) -> date:
        match = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", self.cleaned_data["expiry"])
        if not match:
            raise forms.ValidationError("Write the expiry as MM/YY, for example 12/30.")
        month, year = int(match[1]), int(match[2])
        year += 2000 if year < 100 else 0
        if not 1 <= month <= 12:
            raise forms.ValidationError("The month must be 01 to 12.")
        today = timezone.localdate()
        if (year, month) < (today.year, today.month):
            raise forms.ValidationError("This card has expired.")
        return date(year, month, 1)

    def clean_cvc(self) -> str:
        cvc = str(self.cleaned_data["cvc"]).strip()
        if not cvc.isdigit() or len(cvc) not in (3, 4):
            raise forms.ValidationError("The CVC is the 3 or 4 digits on the back of the card.")
        return cvc


class RefundForm(forms.Form):
    amount = forms.DecimalField(min_value=0, max_digits=12, decimal_places=3)
    reason = forms.CharField(max_length=200, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: object, currency: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.currency = currency
        self.fields["amount"].help_text = f"In {currency}, for example 12.50."

    def clean_amount(self) -> int:
        return refund_minor_units(self.cleaned_data["amount"], self.currency)


def refund_minor_units(value: Decimal, currency: str) -> int:
    """An amount typed in the currency's major units (12.50) as an integer of minor units,
    refused when it has more decimals than the currency or is not more than zero."""
    digits = CURRENCIES[currency][1]
    minor = value * (10**digits)
    if minor != int(minor):
        raise forms.ValidationError(
            f"{currency} has {digits} decimal places; this amount has more."
        )
    if minor <= 0:
        raise forms.ValidationError("The refund must be more than zero.")
    return int(minor)
