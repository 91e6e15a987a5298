from __future__ import annotations

from django import forms

from moderation.models import ReportCategory


class ReportForm(forms.Form):
    category = forms.ChoiceField(label="What happened", choices=ReportCategory.choices)
    text = forms.CharField(
        label="Tell us more",
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Staff read every report. Say what happened and when in the call.",
    )
