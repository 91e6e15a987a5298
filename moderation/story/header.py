"""The top of the story's page: the room's facts, each seat in short, the money in total."""

from __future__ import annotations

from datetime import UTC

from moderation.models import Dispute
from moderation.story.base import _BuilderBase
from moderation.story.money import _settlement_of
from moderation.story.records import Fact, SeatSummary
from moderation.story.words import _close_reason, _room_state, clock_text, duration_text
from rooms.models import Seat, SeatState


class _Header(_BuilderBase):
    """The header's facts, seat summaries and totals."""

    def _room_facts(self) -> list[Fact]:
        room = self.room
        facts = [
            Fact("State", _room_state(room.state)),
            Fact(
                "Scheduled",
                f"{room.starts_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} → "
                f"{room.ends_at.astimezone(UTC):%H:%M:%S} "
                f"({duration_text((room.ends_at - room.starts_at).total_seconds())})",
            ),
        ]
        if room.opened_at:
            facts.append(Fact("Lobby opened", clock_text(room.opened_at, room.starts_at)))
        if room.live_at:
            end = room.closed_at
            window = f"{clock_text(room.live_at, room.starts_at)} → " + (
                f"{clock_text(end, room.starts_at)} "
                f"({duration_text((end - room.live_at).total_seconds())})"
                if end
                else "still live"
            )
            facts.append(Fact("Live window", window))
        else:
            facts.append(Fact("Live window", "never live"))
        if room.closed_at:
            facts.append(
                Fact(
                    "Closed",
                    f"{clock_text(room.closed_at, room.starts_at)}: "
                    f"{_close_reason(room.close_reason)}",
                )
            )
        if room.cancel_reason:
            facts.append(Fact("Canceled", room.cancel_reason_display))
        price = self.money(room.price_minor)
        facts.append(
            Fact(
                "Terms",
                f"{room.get_pricing_display()}: {price}"
                + (" a started minute" if room.pricing == "per_minute" else "")
                + f"; at most {self.money(room.max_amount_minor)}; no-show fee "
                f"{room.no_show_fee_percent} %, late cancel {room.late_cancel_fee_percent} %",
            )
        )
        return facts

    def _seat_summary(self, seat: Seat) -> SeatSummary:
        payment = seat.payment
        money = []
        settlement_text = "—"
        if payment is not None:
            c = payment.currency
            money = [
                Fact("Hold", self.money(payment.amount_minor, c)),
                Fact("Authorized", self.money(payment.authorized_minor, c)),
                Fact("Charged", self.money(payment.captured_minor, c)),
                Fact("Released", self.money(payment.released_minor, c)),
                Fact("Refunded", self.money(payment.refunded_minor, c)),
            ]
            settlement = _settlement_of(payment)
            if settlement is not None:
                settlement_text = (
                    f"{self.money(settlement.amount_minor, settlement.currency)} "
                    f"({settlement.rule})" + (", payout held" if settlement.payout_held else "")
                )
        rating = self.ratings.get(seat.client_id)
        return SeatSummary(
            seat=seat,
            client=self.people[seat.client_id],
            state=SeatState(seat.state).label if seat.state in SeatState.values else seat.state,
            payment=payment,
            payment_state=payment.get_state_display() if payment else "no payment",
            money=money,
            settlement=settlement_text,
            disputes=self._disputes_in_short([d for d in self.disputes if d.seat_id == seat.pk]),
            rating=f"{rating.stars}★ {rating.comment}".strip() if rating else "",
        )

    def _disputes_in_short(self, disputes: list[Dispute]) -> str:
        """A few by number; many (a run of chargebacks) counted by state."""
        if len(disputes) <= 3:
            return ", ".join(f"#{d.pk} {d.get_state_display().lower()}" for d in disputes)
        states: dict[str, int] = {}
        for dispute in disputes:
            label = dispute.get_state_display().lower()
            states[label] = states.get(label, 0) + 1
        return ", ".join(f"{count} {label}" for label, count in states.items())

    def _totals(self) -> list[Fact]:
        charged: dict[str, int] = {}
        refunded: dict[str, int] = {}
        for payment in self.payments.values():
            c = payment.currency
            charged[c] = charged.get(c, 0) + payment.captured_minor
            refunded[c] = refunded.get(c, 0) + payment.refunded_minor
        return [
            Fact(
                f"Money ({c})",
                f"charged {self.money(charged[c], c)}, refunded {self.money(refunded[c], c)}, "
                f"kept {self.money(charged[c] - refunded[c], c)}",
            )
            for c in sorted(charged)
        ]
