from __future__ import annotations

from django.core.exceptions import ValidationError

from accounts.choices import time_zone_names


def validate_time_zone(value: str) -> None:
    if value not in time_zone_names():
        raise ValidationError(
            "“%(value)s” is not a time zone we know. Pick one from the list, e.g. Europe/Berlin.",
            code="invalid_time_zone",
            params={"value": value},
        )
