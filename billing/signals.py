"""What billing tells the layers above it (STYLE.md: a lower layer declares, a higher one
receives and calls its own service). Sent inside the transaction that made the change, so a
receiver's writes commit or roll back with it."""

from django.dispatch import Signal

# A hold was authorized for a payment nobody has settled yet. Arguments: payment.
payment_authorized = Signal()
# The card was saved for a hold placed later (sessions far ahead). Arguments: payment.
payment_card_saved = Signal()
# A chargeback was opened on a captured payment. Arguments: payment, dispute_id, reason.
payment_disputed = Signal()
# The card's bank decided a chargeback. Arguments: payment, dispute_id, status (Stripe's:
# "won", "lost", or "warning_closed" for an inquiry that never became a chargeback).
payment_dispute_closed = Signal()
# A refund decided here did not happen: the provider refused it, at once or later (a refund
# to a closed card). It no longer counts against the charge. Arguments: payment, command_id,
# error.
payment_refund_failed = Signal()
