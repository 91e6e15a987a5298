"""Moderation's records: reports, disputes and staff actions."""

from __future__ import annotations

from django.db.models import Q

from moderation.models import (
    Dispute,
    DisputeSource,
    DisputeState,
    Report,
    StaffAction,
    StaffActionKind,
)
from moderation.story.base import _BuilderBase
from moderation.story.records import Entry, Fact, Link
from moderation.story.words import _SYSTEM, clock_text
from rooms.models import Room


def _staff_actions_of(room: Room, client_ids: list[int]) -> list[StaffAction]:
    """Actions on the room, and bans of its people that took them out of it or canceled it (a
    ban names its rooms in `data`, not by foreign key: it may span several)."""
    people = [room.expert_id, *client_ids]
    actions = StaffAction.objects.filter(
        Q(room=room) | Q(room__isnull=True, kind=StaffActionKind.USER_BAN, subject_id__in=people)
    ).select_related("actor", "subject")
    return [
        action
        for action in actions
        if action.room_id == room.pk
        or room.pk in (action.data or {}).get("rooms", [])
        or room.pk in (action.data or {}).get("upcoming_canceled", [])
    ]


class _ModerationEntries(_BuilderBase):
    """Entries of reports, disputes and staff actions."""

    def _report(self, report: Report) -> Entry:
        facts = [
            Fact("About", self.name_of(report.about_id) if report.about_id else "the session"),
            Fact("Text", report.text),
            Fact("State", report.get_state_display()),
        ]
        if report.resolved_at is not None:
            facts.append(
                Fact(
                    "Resolved",
                    f"{clock_text(report.resolved_at, report.created_at)} by "
                    f"{self.name_of(report.resolved_by_id)}: {report.resolution}",
                )
            )
        return Entry(
            at=report.created_at,
            category="report",
            title=f"Report: {report.get_category_display()}",
            who=self.person(report.reporter),
            who_label="Parley (automatic)",
            facts=facts,
            links=[Link("moderation_report", report.pk, f"Report #{report.pk}")],
            tone="warn" if report.state == "open" else "",
            pk=report.pk,
        )

    def _dispute(self, dispute: Dispute) -> Entry:
        facts = [
            Fact("Reason", dispute.get_reason_display()),
            *([Fact("Text", dispute.text)] if dispute.text else []),
            Fact("Charged when opened", self.money(dispute.charged_minor, dispute.currency)),
            Fact("State", dispute.get_state_display()),
        ]
        if dispute.refund_minor:
            facts.append(Fact("Refund", self.money(dispute.refund_minor, dispute.currency)))
        if dispute.resolved_at is not None:
            by = self.name_of(dispute.resolved_by_id) if dispute.resolved_by_id else _SYSTEM
            facts.append(Fact("Decided", f"{clock_text(dispute.resolved_at)} by {by}"))
        if dispute.resolution_note:
            facts.append(Fact("Note to the client", dispute.resolution_note))
        if dispute.provider_dispute_id:
            facts.append(Fact("Provider dispute", dispute.provider_dispute_id))
        if dispute.refund_error:
            facts.append(Fact("Last refund failed", dispute.refund_error))
        chargeback = dispute.source == DisputeSource.CHARGEBACK
        return Entry(
            at=dispute.created_at,
            category="dispute",
            title="Chargeback opened by the card's bank"
            if chargeback
            else "The client disputed the charge",
            who=None if chargeback else self.person(dispute.client),
            who_label="The card's bank",
            facts=facts,
            links=[
                Link("moderation_dispute", dispute.pk, f"Dispute #{dispute.pk}"),
                self.payment_link(dispute.payment_id),
            ],
            tone="warn" if dispute.state == DisputeState.OPEN else "bad",
            pk=dispute.pk,
        )

    def _staff_action(self, action: StaffAction) -> Entry:
        facts = [Fact("Reason", action.reason)]
        if action.subject_id:
            facts.append(Fact("About", self.name_of(action.subject_id)))
        facts += self.data_facts(action.data, skip=("currency",))
        links = []
        if action.report_id:
            links.append(Link("moderation_report", action.report_id, f"Report #{action.report_id}"))
        if action.dispute_id:
            links.append(
                Link("moderation_dispute", action.dispute_id, f"Dispute #{action.dispute_id}")
            )
        return Entry(
            at=action.created_at,
            category="staff",
            title=f"Staff: {action.get_kind_display().lower()}",
            who=self.person(action.actor),
            facts=facts,
            links=links,
            tone="staff",
            pk=action.pk,
        )
