from __future__ import annotations

from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo

from django import forms

from accounts.choices import CURRENCIES, CURRENCY_CHOICES
from accounts.validators import validate_no_control_characters
from rooms.availability import local_to_utc
from rooms.models import MAX_GROUP_CAPACITY, Offering, OverrideKind, Weekday
from rooms.services.offerings import FREE_NOT_YET


class SlotChoiceForm(forms.Form):
    """The time a client picked: an ISO 8601 instant with its offset, as the slot list sends."""

    starts_at = forms.CharField(max_length=40)

    def clean_starts_at(self) -> datetime:
        raw: str = self.cleaned_data["starts_at"]
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise forms.ValidationError(
                "That time could not be read. Pick one of the listed times."
            ) from None
        if moment.tzinfo is None:
            raise forms.ValidationError("That time has no time zone. Pick one of the listed times.")
        return moment


class OfferingForm(forms.ModelForm[Offering]):
    price = forms.DecimalField(
        min_value=0,
        max_digits=9,
        decimal_places=2,
        help_text="The session's price, or with per-minute pricing the rate per minute.",
    )
    currency = forms.ChoiceField(choices=CURRENCY_CHOICES)

    class Meta:
        model = Offering
        fields = [
            "title",
            "description",
            "length_minutes",
            "pricing",
            "currency",
            "capacity",
            "notice_minutes",
            "buffer_before_minutes",
            "buffer_after_minutes",
            "horizon_days",
            "late_cancel_fee_percent",
            "no_show_fee_percent",
            "is_active",
        ]
        labels = {
            "length_minutes": "Length (minutes)",
            "capacity": "Clients per session",
            "notice_minutes": "Minimum notice (minutes)",
            "buffer_before_minutes": "Buffer before (minutes)",
            "buffer_after_minutes": "Buffer after (minutes)",
            "horizon_days": "Bookable up to (days ahead)",
            "late_cancel_fee_percent": "Late-cancellation fee (%)",
            "no_show_fee_percent": "No-show fee (%)",
            "is_active": "Open for booking",
        }
        help_texts = {
            "capacity": f"1 for private sessions; 2–{MAX_GROUP_CAPACITY} for a group session "
            "that you publish at set times.",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, low, high in [
            ("length_minutes", 15, 180),
            ("capacity", 1, MAX_GROUP_CAPACITY),
            ("horizon_days", 1, 365),
            ("late_cancel_fee_percent", 0, 100),
            ("no_show_fee_percent", 0, 100),
            ("buffer_before_minutes", 0, 240),
            ("buffer_after_minutes", 0, 240),
            ("notice_minutes", 0, 60 * 24 * 14),
        ]:
            field = self.fields[name]
            field.validators.append(_range_validator(name, low, high))
            field.widget.attrs.update({"min": low, "max": high})
        # The title goes into email subjects: no line breaks or other control characters.
        self.fields["title"].validators.append(validate_no_control_characters)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        price, currency = cleaned.get("price"), cleaned.get("currency")
        if price is not None and price <= 0:
            self.add_error("price", FREE_NOT_YET)
        elif price is not None and currency in CURRENCIES:
            digits = CURRENCIES[currency][1]
            if price != round(price, digits):
                self.add_error(
                    "price",
                    f"{currency} has {digits} decimal places"
                    + (": enter a whole amount." if digits == 0 else "."),
                )
        return cleaned

    def minor_amount(self) -> int:
        """The price in minor units (amounts are never floats)."""
        digits = CURRENCIES[self.cleaned_data["currency"]][1]
        return int(self.cleaned_data["price"] * (10**digits))


def _range_validator(name: str, low: int, high: int) -> Any:
    def validate(value: int) -> None:
        if value is not None and not low <= value <= high:
            raise forms.ValidationError(f"Enter a value from {low} to {high}.")

    return validate


class WeeklyAvailabilityForm(forms.Form):
    """The whole week at once: per day, intervals as text, e.g. "09:00-12:00, 14:00-17:30"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for day in Weekday:
            self.fields[f"day_{day.value}"] = forms.CharField(
                label=day.label, required=False, max_length=200
            )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        intervals = []
        for day in Weekday:
            text = cleaned.get(f"day_{day.value}", "")
            for part in filter(None, (chunk.strip() for chunk in text.split(","))):
                try:
                    start_text, end_text = (piece.strip() for piece in part.split("-"))
                    start = time.fromisoformat(start_text)
                    end = time.fromisoformat(end_text)
                except ValueError:
                    self.add_error(
                        f"day_{day.value}",
                        f"“{part}” is not an interval like 09:00-12:00.",
                    )
                    continue
                if not start < end:
                    self.add_error(f"day_{day.value}", f"“{part}” ends before it starts.")
                    continue
                intervals.append((day.value, start, end))
        cleaned["intervals"] = intervals
        return cleaned


class OverrideForm(forms.Form):
    date = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    kind = forms.ChoiceField(choices=OverrideKind.choices)
    start_time = forms.TimeField(required=False, widget=forms.TimeInput(attrs={"type": "time"}))
    end_time = forms.TimeField(required=False, widget=forms.TimeInput(attrs={"type": "time"}))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("kind") == OverrideKind.EXTRA:
            start, end = cleaned.get("start_time"), cleaned.get("end_time")
            if start is None or end is None:
                raise forms.ValidationError("Extra hours need a start and an end time.")
            if not start < end:
                raise forms.ValidationError("The extra hours must end after they start.")
        return cleaned


class GroupSessionForm(forms.Form):
    """A wall-clock start in the expert's zone, resolved to an instant with the same DST rules
    as the slots: a time skipped by a clock change is refused; a repeated one is its first
    occurrence."""

    starts_at = forms.CharField(
        max_length=40, widget=forms.DateTimeInput(attrs={"type": "datetime-local"})
    )

    def __init__(self, *args: Any, zone: ZoneInfo, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.zone = zone

    def clean_starts_at(self) -> datetime:
        raw: str = self.cleaned_data["starts_at"]
        try:
            local = datetime.fromisoformat(raw)
        except ValueError:
            raise forms.ValidationError(
                "Enter the date and time of the session, like 2026-12-10 18:00."
            ) from None
        if local.tzinfo is not None:
            local = local.astimezone(self.zone).replace(tzinfo=None)
        moment = local_to_utc(local.date(), local.time(), self.zone)
        if moment is None:
            raise forms.ValidationError(
                f"{local:%H:%M} does not exist on {local:%d %B %Y} in {self.zone.key}: "
                "the clocks skip it. Pick another time."
            )
        return moment


class RatingForm(forms.Form):
    stars = forms.TypedChoiceField(
        label="How was the session?",
        coerce=int,
        choices=[(n, f"{n} star{'s' if n > 1 else ''}") for n in range(5, 0, -1)],
        widget=forms.RadioSelect,
    )
    comment = forms.CharField(
        label="Anything to add (optional)",
        required=False,
        max_length=1000,
        widget=forms.Textarea(attrs={"rows": 2}),
    )
