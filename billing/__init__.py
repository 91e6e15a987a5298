"""Payments: holds, settlements, payment commands (outbox), webhooks and payouts."""
