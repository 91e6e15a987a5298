"""Every change moderation makes — reports, blocks, live-room actions, disputes — one module
per entity, this package the one door. Staff actions check the actor and write a StaffAction
in the transaction of the change."""

from moderation.services.blocks import block_create, block_remove
from moderation.services.disputes import (
    CHARGEBACK_OUTCOMES,
    Outcome,
    dispute_chargeback_closed,
    dispute_deadline,
    dispute_open,
    dispute_open_chargeback,
    dispute_refund_failed,
    dispute_resolve,
)
from moderation.services.errors import ModerationError
from moderation.services.live import (
    staff_participant_remove,
    staff_room_end,
    staff_user_ban,
    staff_user_unban,
)
from moderation.services.reports import report_file, report_file_expert_no_show, report_resolve

__all__ = [
    "CHARGEBACK_OUTCOMES",
    "ModerationError",
    "Outcome",
    "block_create",
    "block_remove",
    "dispute_chargeback_closed",
    "dispute_deadline",
    "dispute_open",
    "dispute_open_chargeback",
    "dispute_refund_failed",
    "dispute_resolve",
    "report_file",
    "report_file_expert_no_show",
    "report_resolve",
    "staff_participant_remove",
    "staff_room_end",
    "staff_user_ban",
    "staff_user_unban",
]
