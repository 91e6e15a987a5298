"""What the dispute tests share: a seat charged after a real call, and a snapshot of everything
opening or deciding a dispute may write (to show that a refusal wrote nothing)."""

from __future__ import annotations

from typing import Any

from accounts.models import OutboundEmail
from billing.models import CommandState, Payment, PaymentCommand, PaymentState, Settlement
from billing.tests.helpers import commands_run_pending
from moderation.models import Dispute, StaffAction
from rooms.models import RoomEvent, Seat
from rooms.tests.factories import room_closed_after_a_call, seat_booked


def seat_charged(seat: Seat | None = None) -> Seat:
    """A client's seat after a real call: settled, and its capture sent to the provider (the
    local one, unless a seat paid elsewhere is given)."""
    seat = seat or seat_booked()
    room_closed_after_a_call(seat)
    # Inside a test's transaction the capture waits for this; outside, it ran on commit.
    assert set(commands_run_pending()) <= {CommandState.SUCCEEDED}
    seat.refresh_from_db()
    assert payment_of(seat).state == PaymentState.CAPTURED
    return seat


def payment_of(seat: Seat) -> Payment:
    assert seat.payment_id is not None
    return Payment.objects.get(pk=seat.payment_id)


def settlement_of(seat: Seat) -> Settlement:
    return Settlement.objects.get(payment=payment_of(seat))


def payout_held(seat: Seat) -> bool:
    return settlement_of(seat).payout_held


def records(seat: Seat) -> dict[str, Any]:
    """Everything opening or deciding a dispute may write, to compare around a refusal."""
    payment = payment_of(seat)
    return {
        "disputes": list(
            Dispute.objects.order_by("pk").values_list(
                "pk", "state", "refund_minor", "resolution_note", "resolved_at"
            )
        ),
        "payment": (payment.state, payment.captured_minor, payment.refunded_minor),
        "payment_events": payment.events.count(),
        "commands": list(
            PaymentCommand.objects.order_by("pk").values_list("kind", "state", "amount_minor")
        ),
        "payout_held": payout_held(seat),
        "room_events": list(
            RoomEvent.objects.filter(room_id=seat.room_id).values_list("kind", flat=True)
        ),
        "staff_actions": StaffAction.objects.count(),
        "emails": sorted(OutboundEmail.objects.values_list("key", flat=True)),
    }
