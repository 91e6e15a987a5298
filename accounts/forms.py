from __future__ import annotations

from typing import Any

from django import forms
from django.http import HttpRequest

from accounts import services
from accounts.choices import CURRENCY_CHOICES, language_choices, time_zone_choices
from accounts.models import ExpertProfile, User
from accounts.validators import validate_no_control_characters, validate_time_zone


class TimeZoneField(forms.ChoiceField):
    """A select of IANA zones. With detect=True, static/js/timezone.js preselects the
    browser's zone (for a new account, where UTC is only a placeholder)."""

    def __init__(self, *, detect: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("initial", "UTC")
        kwargs.setdefault("help_text", "Times are shown to you in this zone.")
        super().__init__(choices=time_zone_choices, **kwargs)
        if detect:
            self.widget.attrs["data-detect-time-zone"] = "true"

    def valid_value(self, value: Any) -> bool:
        # Accept every zone the server knows, including aliases the list does not show
        # (a browser may report "Asia/Calcutta").
        try:
            validate_time_zone(str(value))
        except forms.ValidationError:
            return False
        return True


class SignupForm(forms.Form):
    """Extra fields on allauth's signup form (allauth calls `signup` after creating the user)."""

    display_name = forms.CharField(
        max_length=80,
        validators=[validate_no_control_characters],
        help_text="Shown to the people you meet in calls.",
    )
    time_zone = TimeZoneField(detect=True)

    field_order = ["email", "display_name", "time_zone", "password1", "password2"]

    def signup(self, request: HttpRequest, user: User) -> None:
        services.user_profile_update(
            user,
            display_name=self.cleaned_data["display_name"],
            time_zone=self.cleaned_data["time_zone"],
        )


class ProfileForm(forms.Form):
    display_name = forms.CharField(max_length=80, validators=[validate_no_control_characters])
    time_zone = TimeZoneField()
    booking_reminders = forms.BooleanField(
        required=False,
        label="Email me session reminders",
        help_text=(
            "A reminder the day before and 15 minutes before each session. Booking "
            "confirmations, changes and cancellations are always sent."
        ),
    )


class ExpertApplicationForm(forms.Form):
    headline = forms.CharField(
        max_length=120,
        validators=[validate_no_control_characters],
        help_text="One line that says what you help with, e.g. “Kubernetes cost reviews”.",
    )
    bio = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 8}),
        min_length=50,
        max_length=5000,
        help_text="Your experience and what a client gets from a session (at least 50 characters).",
    )
    languages = forms.MultipleChoiceField(
        choices=language_choices,
        widget=forms.SelectMultiple(attrs={"size": 6}),
        help_text="The languages you hold sessions in.",
    )
    currency = forms.ChoiceField(
        choices=CURRENCY_CHOICES, help_text="Your prices and payouts are in this currency."
    )
    time_zone = TimeZoneField(help_text="Your weekly availability is set in this zone.")

    @classmethod
    def initial_for(cls, user: User, profile: ExpertProfile | None) -> dict[str, Any]:
        if profile is None:
            return {"time_zone": user.time_zone}
        return {
            "headline": profile.headline,
            "bio": profile.bio,
            "languages": profile.languages,
            "currency": profile.currency,
            "time_zone": profile.time_zone,
        }


class RejectionForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        max_length=2000,
        help_text="The applicant sees this. Say what is missing and what would change the answer.",
    )
