from __future__ import annotations


class BillingError(Exception):
    """A refused money operation; the message says what was wrong, for the person who asked."""


class PaymentRefused(BillingError):
    pass
