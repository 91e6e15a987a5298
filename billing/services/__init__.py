"""Every change to payments: holds, settlements, commands to the provider, refunds, webhooks,
payouts — one module per entity, this package the one door (STYLE.md: services are the only
code that changes state).

Rules kept here (docs/RULES.md, Money):
- A payment's state and totals change only in this package, under a row lock, and only
  forward; every change writes a PaymentEvent.
- Decisions (settle, release, refund, transfer) are written as PaymentCommands inside the
  caller's transaction. The provider is called after commit, by `command_execute`, never
  inside a transaction.
- What the provider says (a command's answer, the browser's return, a webhook) is applied by
  `payment_apply_intent`, which moves state only forward, so duplicates and out-of-order
  arrivals change nothing.
"""

from billing.services.commands import command_execute, commands_due_ids, commands_execute
from billing.services.payments import (
    Checkout,
    holds_due_ids,
    payment_apply_intent,
    payment_apply_setup,
    payment_checkout,
    payment_hold_place,
    payment_local_card,
    payment_open,
    payment_sync,
)
from billing.services.payouts import (
    payout_account_link,
    payout_account_refresh,
    payout_hold,
    payout_hold_lift,
    payouts_due_create,
)
from billing.services.records import HOLD_ENDING_COMMANDS, UNPAID_STATES, commands_batched
from billing.services.settlements import (
    payment_refund,
    payment_release,
    payment_settle,
    payment_settle_call,
    payments_lock,
    payments_lock_selected,
)
from billing.services.webhooks import (
    WEBHOOK_HANDLERS,
    webhook_process,
    webhook_receive,
    webhooks_pending_ids,
)

__all__ = [
    "HOLD_ENDING_COMMANDS",
    "UNPAID_STATES",
    "WEBHOOK_HANDLERS",
    "Checkout",
    "command_execute",
    "commands_batched",
    "commands_due_ids",
    "commands_execute",
    "holds_due_ids",
    "payment_apply_intent",
    "payment_apply_setup",
    "payment_checkout",
    "payment_hold_place",
    "payment_local_card",
    "payment_open",
    "payment_refund",
    "payment_release",
    "payment_settle",
    "payment_settle_call",
    "payment_sync",
    "payments_lock",
    "payments_lock_selected",
    "payout_account_link",
    "payout_account_refresh",
    "payout_hold",
    "payout_hold_lift",
    "payouts_due_create",
    "webhook_process",
    "webhook_receive",
    "webhooks_pending_ids",
]
