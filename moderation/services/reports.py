"""Reports to staff: filed by a participant, or by Parley on an expert no-show; resolved by
staff with a note."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.models import User
from moderation.models import Report, ReportCategory, ReportState, StaffActionKind
from moderation.services.errors import ModerationError
from moderation.services.staff import staff_action_write, staff_check
from rooms.models import Room, Seat
from rooms.services.records import room_event_write


def report_file(
    room_id: int, reporter: User, *, category: str, text: str, about: User | None = None
) -> Report:
    """A participant reports a session to staff, and someone in it: `about`, or by default
    the other side of a private session (a client's expert, the expert's client); in a group
    session without `about`, the report is about the session."""
    if category not in ReportCategory.values:
        raise ModerationError("Choose what the report is about.")
    text = text.strip()
    if not text:
        raise ModerationError("Say what happened, so staff can act on it.")
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room_id)
        clients = list(Seat.objects.filter(room=room).values_list("client_id", flat=True))
        people = {room.expert_id, *clients}
        if reporter.pk not in people:
            raise ModerationError("Only the people in a session can report it.")
        if about is not None and (about.pk not in people or about.pk == reporter.pk):
            raise ModerationError("You can report someone who was in this session with you.")
        about_id = about.pk if about is not None else None
        if about_id is None and reporter.pk != room.expert_id:
            about_id = room.expert_id
        elif about_id is None and room.capacity == 1 and clients:
            about_id = clients[0]
        report = Report.objects.create(
            room=room, reporter=reporter, about_id=about_id, category=category, text=text
        )
        room_event_write(room, "reported", reporter, report=report.pk, category=category)
    return report


def report_file_expert_no_show(room: Room) -> Report | None:
    """Parley's own report when an expert did not join their session (inside the close's
    transaction). One per room: a close that is retried files nothing new."""
    if Report.objects.filter(room=room, automatic=True).exists():
        return None
    try:
        with transaction.atomic():
            report = Report.objects.create(
                room=room,
                reporter=None,
                automatic=True,
                about_id=room.expert_id,
                category=ReportCategory.FRAUD,
                text=(
                    "The expert did not join within the no-show time after the start; the "
                    "session closed and the clients' holds were released."
                ),
            )
    except IntegrityError:
        return None
    room_event_write(room, "reported", None, report=report.pk, category=report.category)
    return report


def report_resolve(report_id: int, *, actor: User, resolution: str) -> Report:
    """Staff close a report with what they found and did."""
    resolution = staff_check(actor, resolution)
    with transaction.atomic():
        report = Report.objects.select_for_update().get(pk=report_id)
        if report.state != ReportState.OPEN:
            raise ModerationError(
                f"This report was already resolved on {report.resolved_at:%Y-%m-%d %H:%M} UTC."
            )
        if actor.pk in (report.reporter_id, report.about_id):
            raise ModerationError(
                "You filed this report or it is about you; another staff member resolves it."
            )
        now = timezone.now()
        Report.objects.filter(pk=report.pk).update(
            state=ReportState.RESOLVED, resolution=resolution, resolved_by=actor, resolved_at=now
        )
        report.refresh_from_db()
        staff_action_write(
            actor, StaffActionKind.REPORT_RESOLVE, resolution, report=report, room_id=report.room_id
        )
    return report
