"""Reference lists shared by every layer: currencies, languages and time zones.

They live in the lowest app so that billing (money), rooms (offerings) and the forms here all
validate against one list.
"""

from __future__ import annotations

import zoneinfo
from functools import cache

from django.conf.locale import LANG_INFO

# ISO 4217 code → (name, digits after the decimal point). Amounts are stored in minor units, so
# the exponent decides what "1000" means: 10.00 EUR but 1000 JPY.
CURRENCIES: dict[str, tuple[str, int]] = {
    "USD": ("US dollar", 2),
    "EUR": ("Euro", 2),
    "GBP": ("Pound sterling", 2),
    "CHF": ("Swiss franc", 2),
    "CAD": ("Canadian dollar", 2),
    "AUD": ("Australian dollar", 2),
    "NZD": ("New Zealand dollar", 2),
    "SEK": ("Swedish krona", 2),
    "NOK": ("Norwegian krone", 2),
    "DKK": ("Danish krone", 2),
    "PLN": ("Polish złoty", 2),
    "CZK": ("Czech koruna", 2),
    "SGD": ("Singapore dollar", 2),
    "HKD": ("Hong Kong dollar", 2),
    "INR": ("Indian rupee", 2),
    "BRL": ("Brazilian real", 2),
    "MXN": ("Mexican peso", 2),
    "ZAR": ("South African rand", 2),
    "JPY": ("Japanese yen", 0),
}

CURRENCY_CHOICES: list[tuple[str, str]] = [
    (code, f"{code} — {name}") for code, (name, _digits) in CURRENCIES.items()
]


@cache
def language_choices() -> list[tuple[str, str]]:
    """Two-letter ISO 639-1 languages that Django knows a name for, sorted by that name."""
    pairs = [
        (code, str(info["name"]))
        for code, info in LANG_INFO.items()
        if len(code) == 2 and "name" in info
    ]
    return sorted(pairs, key=lambda pair: pair[1])


def language_name(code: str) -> str:
    return dict(language_choices()).get(code, code)


# Files of the zone database that `zoneinfo.available_timezones()` lists but that are not
# zones: "localtime" is the server's own zone (whatever it is), "Factory" shows "-00", and
# "posixrules" is only a template for POSIX TZ strings. No browser reports them.
_NOT_ZONES = frozenset({"localtime", "Factory", "posixrules"})


@cache
def time_zone_names() -> frozenset[str]:
    # Deprecated aliases ("US/Eastern", "Etc/GMT+5") are legal but confuse people picking
    # from a list; keep them valid, list only the canonical Area/City names.
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


@cache
def time_zone_choices() -> list[tuple[str, str]]:
    names = sorted(
        name
        for name in time_zone_names()
        if "/" in name and not name.startswith(("Etc/", "SystemV/", "US/"))
    )
    return [("UTC", "UTC"), *((name, name.replace("_", " ")) for name in names)]
