from __future__ import annotations

import unicodedata

from django.core.exceptions import ValidationError

from accounts.choices import time_zone_names


def validate_time_zone(value: str) -> None:
    if value not in time_zone_names():
        raise ValidationError(
            "“%(value)s” is not a time zone we know. Pick one from the list, e.g. Europe/Berlin.",
            code="invalid_time_zone",
            params={"value": value},
        )


def validate_no_control_characters(value: str) -> None:
    """Names and titles go into email subjects and headers: a line break there breaks the
    message (BadHeaderError), and no name needs a tab, a NUL or a bell."""
    if any(unicodedata.category(char) in ("Cc", "Zl", "Zp") for char in value):
        raise ValidationError(
            "Use letters, digits, spaces and punctuation only: line breaks and other control "
            "characters are not allowed here.",
            code="control_characters",
        )
