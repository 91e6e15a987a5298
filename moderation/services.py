"""Every change moderation makes: reports (and, with issue 7, blocks, staff actions, disputes)."""

from __future__ import annotations

from django.db import transaction

from accounts.models import User
from moderation.models import Report, ReportCategory
from rooms.models import Room, Seat
from rooms.services.records import event_write


class ModerationError(Exception):
    """A moderation action refused; the message says why, for the person who tried."""


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
        event_write(room, "reported", reporter, report=report.pk, category=category)
    return report
