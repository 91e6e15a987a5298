"""Moderation's refusals."""


class ModerationError(Exception):
    """A moderation action refused; the message says why, for the person who tried."""
