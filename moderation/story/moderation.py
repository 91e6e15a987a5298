"""Moderation's records as entries: reports, disputes and staff actions."""

from __future__ import annotations

from moderation.models import DisputeSource, DisputeState
from moderation.story.entries import Entry, Fact, Link
from moderation.story.load import Records
from moderation.story.words import Teller


def report_entries(records: Records, teller: Teller) -> list[Entry]:
    entries = []
    for report in records.reports:
        facts = [
            Fact("About", teller.name(report.about_id) if report.about_id else "the session"),
            Fact("Text", report.text),
            Fact("State", report.get_state_display()),
        ]
        if report.resolved_at is not None:
            when = teller.clock(report.resolved_at, report.created_at)
            by = teller.name(report.resolved_by_id)
            facts.append(Fact("Resolved", f"{when} by {by}: {report.resolution}"))
        entries.append(
            Entry(
                at=report.created_at,
                category="report",
                title=f"Report: {report.get_category_display()}",
                who=teller.person(report.reporter_id),
                who_label="Parley (automatic)",
                facts=tuple(facts),
                links=(Link("moderation_report", report.pk, f"Report #{report.pk}"),),
                tone="warn" if report.state == "open" else "",
                pk=report.pk,
            )
        )
    return entries


def dispute_entries(records: Records, teller: Teller) -> list[Entry]:
    entries = []
    for dispute in records.disputes:
        facts = [
            Fact("Reason", dispute.get_reason_display()),
            *([Fact("Text", dispute.text)] if dispute.text else []),
            Fact("Charged when opened", teller.money(dispute.charged_minor, dispute.currency)),
            Fact("State", dispute.get_state_display()),
        ]
        if dispute.refund_minor:
            facts.append(Fact("Refund", teller.money(dispute.refund_minor, dispute.currency)))
        if dispute.resolved_at is not None:
            by = teller.name(dispute.resolved_by_id) if dispute.resolved_by_id else "Parley"
            facts.append(Fact("Decided", f"{teller.clock(dispute.resolved_at)} by {by}"))
        if dispute.resolution_note:
            facts.append(Fact("Note to the client", dispute.resolution_note))
        if dispute.provider_dispute_id:
            facts.append(Fact("Provider dispute", dispute.provider_dispute_id))
        if dispute.refund_error:
            facts.append(Fact("Last refund failed", dispute.refund_error))
        chargeback = dispute.source == DisputeSource.CHARGEBACK
        entries.append(
            Entry(
                at=dispute.created_at,
                category="dispute",
                title="Chargeback opened by the card's bank"
                if chargeback
                else "The client disputed the charge",
                who=None if chargeback else teller.person(dispute.client_id),
                who_label="The card's bank",
                facts=tuple(facts),
                links=(
                    Link("moderation_dispute", dispute.pk, f"Dispute #{dispute.pk}"),
                    teller.payment_link(dispute.payment_id),
                ),
                tone="warn" if dispute.state == DisputeState.OPEN else "bad",
                pk=dispute.pk,
            )
        )
    return entries


def staff_action_entries(records: Records, teller: Teller) -> list[Entry]:
    entries = []
    for row in records.staff_actions:
        action = row.record
        facts = [Fact("Reason", action.reason)]
        if action.subject_id:
            facts.append(Fact("About", teller.name(action.subject_id)))
        facts += teller.facts(row.data, skip=("currency",))
        links = []
        if action.report_id:
            links.append(Link("moderation_report", action.report_id, f"Report #{action.report_id}"))
        if action.dispute_id:
            links.append(
                Link("moderation_dispute", action.dispute_id, f"Dispute #{action.dispute_id}")
            )
        entries.append(
            Entry(
                at=action.created_at,
                category="staff",
                title=f"Staff: {action.get_kind_display().lower()}",
                who=teller.person(action.actor_id),
                facts=tuple(facts),
                links=tuple(links),
                tone="staff",
                pk=action.pk,
            )
        )
    return entries
