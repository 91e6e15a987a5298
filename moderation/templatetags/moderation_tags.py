"""Moderation's parts of the room page, for the templates of a lower layer (rooms never
imports moderation): the Report and Block dialogs of the call, and after the call the report
form, the block form and the client's dispute of the charge (the expert sees that a charge is
disputed, not what the client wrote)."""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse
from django.utils import timezone

from accounts.models import Block, User
from billing.models import Settlement
from billing.pricing import format_money
from moderation import services
from moderation.forms import BlockForm, DisputeForm, ReportForm, SessionPeople, session_people
from moderation.models import Dispute, DisputeSource, DisputeState
from rooms.models import Room, RoomKind, Seat

register = template.Library()


def _viewer(context: template.Context) -> User | None:
    request = context.get("request")
    user = getattr(request, "user", None)
    return user if isinstance(user, User) else None


def _people(context: template.Context, room: Room) -> tuple[User, SessionPeople] | None:
    user = _viewer(context)
    if user is None:
        return None
    people = session_people(room, user)
    return (user, people) if people is not None else None


@register.inclusion_tag("moderation/_report_form.html", takes_context=True)
def report_form(context: template.Context, room: Room) -> dict[str, Any]:
    """After the call: report the session, or someone in it, to staff."""
    found = _people(context, room)
    choices = found[1].choices if found else []
    return {"room": room, "form": ReportForm(choices=choices), "shown": found is not None}


@register.inclusion_tag("moderation/_block_form.html", takes_context=True)
def block_form(context: template.Context, room: Room) -> dict[str, Any]:
    """After the call: block the other side (the expert of a group session picks a client),
    or unblock whom one already blocked. Nobody learns here who blocked *them*."""
    found = _people(context, room)
    if found is None:
        return {"shown": False}
    user, people = found
    candidates = people.choices or ([people.other] if people.other else [])
    made = {
        b.blocked_id: b
        for b in Block.objects.filter(blocker=user, blocked__in=[p.pk for p in candidates])
    }
    still = [person for person in candidates if person.pk not in made]
    return {
        "shown": bool(candidates),
        "room": room,
        "blocked": [(person, made[person.pk]) for person in candidates if person.pk in made],
        # One named person (a client's expert, a private session's client) or a choice.
        "target": still[0] if still and not people.choices else None,
        "form": BlockForm(choices=still, auto_id="block-%s") if still else None,
        "is_expert": people.is_expert,
        # Unblocking comes back to the room page (the fragment may have been fetched).
        "back": reverse("rooms:join", args=[room.pk]),
    }


def _dispute_view(dispute: Dispute) -> dict[str, Any]:
    refund = format_money(dispute.refund_minor, dispute.currency)
    looking = "Open: Parley staff are looking at it."
    if dispute.refund_error:
        looking = "Open again: the refund to your card did not go through; Parley staff are "
        looking += "looking at it."
    outcome = {
        DisputeState.OPEN: looking,
        DisputeState.REFUNDED: f"Refunded in full: {refund} goes back to your card.",
        DisputeState.PARTIALLY_REFUNDED: f"Partly refunded: {refund} goes back to your card.",
        DisputeState.REJECTED: "Rejected: the charge stands.",
        DisputeState.CHARGEBACK_WON: "Decided by your card's bank: the charge stands.",
        DisputeState.CHARGEBACK_LOST: "Decided by your card's bank: the money went back to you.",
    }[DisputeState(dispute.state)]
    return {"dispute": dispute, "outcome": outcome, "refund": refund}


@register.inclusion_tag("moderation/_dispute_panel.html", takes_context=True)
def dispute_panel(context: template.Context, room: Room) -> dict[str, Any]:
    """After the call. A client: for their own charged seat, the dispute form while the window
    is open, when it closed once it has, and their dispute's state, outcome and staff note. The
    expert: which clients' charges are disputed, and that their payout waits for them."""
    found = _people(context, room)
    if found is None:
        return {"shown": False}
    user, people = found
    if people.is_expert:
        of_room = Dispute.objects.filter(seat__room=room).select_related("client")
        return {
            "shown": True,
            "is_expert": True,
            "disputes": [_dispute_view(d) for d in of_room.order_by("created_at", "pk")],
        }
    seats = Seat.objects.filter(room=room, client=user).exclude(payment=None).order_by("pk")
    settlements = {
        s.payment_id: s
        for s in Settlement.objects.filter(payment_id__in=[seat.payment_id for seat in seats])
    }
    now = timezone.now()
    entries = []
    for seat in seats:
        settlement = settlements.get(seat.payment_id) if seat.payment_id else None
        if settlement is None or settlement.amount_minor == 0:
            continue
        disputes = list(Dispute.objects.filter(seat=seat).order_by("created_at", "pk"))
        deadline = services.dispute_deadline(settlement)
        by_client = any(d.source == DisputeSource.CLIENT for d in disputes)
        entries.append(
            {
                "settlement": settlement,
                "charged": format_money(settlement.amount_minor, settlement.currency),
                "deadline": deadline,
                "window_open": now <= deadline,
                "by_client": by_client,
                "disputes": [_dispute_view(d) for d in disputes],
                "form": (
                    DisputeForm(auto_id="dispute-%s") if now <= deadline and not by_client else None
                ),
            }
        )
    return {"shown": bool(entries), "is_expert": False, "room": room, "entries": entries}


@register.inclusion_tag("moderation/_call_controls.html", takes_context=True)
def call_moderation(context: template.Context, room: Room) -> dict[str, Any]:
    """In the call: the Report and Block dialogs behind the #report-open and #block-open
    controls (static/js/room/main.js sends them with fetch and stays in the call)."""
    found = _people(context, room)
    if found is None:
        return {"shown": False}
    _, people = found
    return {
        "shown": True,
        "room": room,
        "is_expert": people.is_expert,
        "group": room.kind == RoomKind.GROUP,
        "other": people.other,
        "report": ReportForm(choices=people.choices, auto_id="report-%s"),
        "block": BlockForm(choices=people.choices, auto_id="block-call-%s"),
    }
