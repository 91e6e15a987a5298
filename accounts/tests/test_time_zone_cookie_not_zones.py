"""The visitor's `tz` cookie: only IANA zone names may come through."""

from __future__ import annotations

import pytest

from accounts.middleware import time_zone_from_cookie


@pytest.mark.parametrize("value", ["localtime", "Factory", "posixrules"])
def test_files_of_the_zone_database_that_are_not_zones_are_refused(value: str) -> None:
    """`zoneinfo.available_timezones()` lists every TZif file it finds, "localtime" (the
    server's own zone, whatever it is) and "Factory" among them; a browser never reports
    either. A cookie naming them shows a visitor times in the server's zone labelled
    "localtime", or in "-00" — it must get the default instead."""
    assert time_zone_from_cookie(value) is None
