"""The emails of a booking's life, each with its calendar invitation, written to the outbox.

Keys make each email happen once: a retried task, a second worker or a second sweep cannot
send the same confirmation, update, cancellation or reminder twice.

A booking's confirmations are queued by the payment's authorization, on the booking's hot
path: they are written as ids and rendered by the worker that sends them
(`booking_email_render`), from the session as it is then. The others are rendered when queued.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime, timedelta
from typing import Any, Literal

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from icalendar import Calendar, Event, vCalAddress

from accounts.models import OutboundEmail, User
from accounts.services import (
    EmailContent,
    EmailToRender,
    email_queue_rendered,
    email_render,
    email_renderer,
    emails_queue_to_render,
)
from accounts.unsubscribe import reminders_unsubscribe_headers, reminders_unsubscribe_url
from billing.pricing import format_money
from rooms.models import Room, RoomState, Seat

# Who a cancellation came from, as the email tells it (a block reads as the expert's).
CanceledBy = Literal["client", "expert", "parley"]

REMINDERS: dict[str, timedelta] = {"24h": timedelta(hours=24), "15min": timedelta(minutes=15)}


def join_url(room: Room) -> str:
    return f"{settings.SITE_URL}{reverse('rooms:join', args=[room.pk])}"


def local_time(moment: datetime, person: User) -> str:
    """A time as the person reads it, with their zone named: "Tuesday 3 March 2026, 09:00
    (Europe/Berlin)"."""
    zone = zoneinfo.ZoneInfo(person.time_zone)
    local = moment.astimezone(zone)
    return f"{local:%A} {local.day} {local:%B %Y, %H:%M} ({person.time_zone})"


def session_with(room: Room, person: User, seat: Seat | None = None) -> str:
    """The session as one recipient reads it: "Title with <the other person>". A client sees
    the expert; the expert sees the client of a one-to-one session (the seat's, else the
    one holding a place), or the number of clients of a group session — never themselves."""
    if person.pk != room.expert_id:
        return f"{room.title} with {room.expert.display_name}"
    if room.capacity == 1 and seat is not None:
        clients = [seat.client.display_name]
    else:
        clients = list(
            room.seats.holding_place().order_by("pk").values_list("client__display_name", flat=True)
        )
    if room.capacity == 1 and clients:
        return f"{room.title} with {clients[0]}"
    if not clients:
        return room.title
    return f"{room.title} with {len(clients)} client{'s' if len(clients) != 1 else ''}"


def invitation(
    room: Room, *, method: str, sequence: int, attendee: User, seat: Seat | None = None
) -> str:
    """An iCalendar object for the room, addressed to one attendee. The UID is stable per
    room, so a later REQUEST (reschedule) or CANCEL with a higher SEQUENCE updates the event
    already in the calendar. Other clients of a group session are not listed: their
    addresses are not the recipient's business."""
    calendar = Calendar()
    calendar.add("prodid", "-//Parley//Sessions//EN")
    calendar.add("version", "2.0")
    calendar.add("method", method)
    event = Event()
    event.add("uid", f"room-{room.pk}@parley")
    event.add("sequence", sequence)
    event.add("dtstamp", timezone.now())
    event.add("dtstart", room.starts_at)
    event.add("dtend", room.ends_at)
    event.add("summary", session_with(room, attendee, seat))
    event.add("description", f"Join the call: {join_url(room)}")
    event.add("url", join_url(room))
    event.add("location", join_url(room))
    event.add("status", "CANCELLED" if method == "CANCEL" else "CONFIRMED")
    organizer = vCalAddress(f"mailto:{room.expert.email}")
    organizer.params["cn"] = room.expert.display_name
    event.add("organizer", organizer)
    if attendee.pk != room.expert_id:
        address = vCalAddress(f"mailto:{attendee.email}")
        address.params["cn"] = attendee.display_name
        event.add("attendee", address)
    calendar.add_component(event)
    return str(calendar.to_ical().decode())


def _content(
    person: User,
    template: str,
    seat: Seat,
    room: Room,
    *,
    method: str = "REQUEST",
    **extra: object,
) -> EmailContent:
    """The email's bodies and its invitation (method "" for none)."""
    body, html = email_render(
        template,
        {
            "person": person,
            "room": room,
            "seat": seat,
            "starts": local_time(room.starts_at, person),
            "join_url": join_url(room),
            "session_with": session_with(room, person, seat),
            **extra,
        },
    )
    # A cancellation must outrank every invitation sent before it.
    sequence = room.sequence + (1 if method == "CANCEL" else 0)
    ics = (
        invitation(room, method=method, sequence=sequence, attendee=person, seat=seat)
        if method
        else ""
    )
    return EmailContent(body=body, html=html, ics=ics, ics_method=method)


def _send(
    key: str,
    person: User,
    subject: str,
    template: str,
    seat: Seat,
    room: Room,
    *,
    method: str = "REQUEST",
    headers: dict[str, str] | None = None,
    **extra: object,
) -> bool:
    """Queue one email with its invitation (method "" for none). False: the key was sent."""
    if OutboundEmail.objects.filter(key=key).exists():
        return False  # checked first: rendering an invitation is the expensive part
    content = _content(person, template, seat, room, method=method, **extra)
    _email, created = email_queue_rendered(
        key=key,
        to=person.email,
        subject=subject,
        body=content.body,
        html=content.html,
        ics=content.ics,
        ics_method=content.ics_method,
        headers=headers,
    )
    return created


BOOKING_RENDERER = "rooms.booking"
_TEMPLATES = "rooms/email/"


@email_renderer(BOOKING_RENDERER)
def booking_email_render(args: dict[str, Any]) -> EmailContent:
    """Render a booking email queued as ids (`_to_render`), from the seat as it is now."""
    template = str(args["template"])
    if not template.startswith(_TEMPLATES):
        raise ValueError(f"Not a booking email's template: {template}")
    seat = Seat.objects.select_related("room", "room__expert", "client").get(pk=args["seat"])
    room = seat.room
    people = {seat.client_id: seat.client, room.expert_id: room.expert}
    person = people.get(args["person"]) or User.objects.get(pk=args["person"])
    return _content(
        person, template, seat, room, method=str(args["method"]), **dict(args.get("extra", {}))
    )


def _to_render(
    key: str, person: User, subject: str, template: str, seat: Seat, *, method: str = "REQUEST"
) -> EmailToRender:
    return EmailToRender(
        key=key,
        to=person.email,
        subject=subject,
        renderer=BOOKING_RENDERER,
        args={"template": template, "seat": seat.pk, "person": person.pk, "method": method},
    )


def booking_confirmed(seat: Seat) -> None:
    """The client's confirmation and the expert's notice, rendered when they are sent: this
    runs in the payment's authorization, where one INSERT is all they cost.

    `seat` comes with its room, the room's expert and its client loaded."""
    room = seat.room
    emails_queue_to_render(
        [
            _to_render(
                f"booking-confirmed:{seat.pk}",
                seat.client,
                f"Booked: {room.title} with {room.expert.display_name}",
                "rooms/email/booking_confirmed.txt",
                seat,
            ),
            _to_render(
                f"booking-new-for-expert:{seat.pk}",
                room.expert,
                f"New booking: {room.title} with {seat.client.display_name}",
                "rooms/email/booking_new_for_expert.txt",
                seat,
            ),
        ]
    )


def booking_rescheduled(seat: Seat, room: Room) -> None:
    for person in (seat.client, room.expert):
        _send(
            f"booking-rescheduled:{seat.pk}:{room.sequence}:{person.pk}",
            person,
            f"Moved: {room.title} is now {local_time(room.starts_at, person)}",
            "rooms/email/booking_rescheduled.txt",
            seat,
            room,
        )


def booking_canceled(seat: Seat, *, by: CanceledBy) -> None:
    """The client's calendar loses the event. The expert's loses it only when the whole room is
    canceled (once per room); one client leaving a group session is a plain notice."""
    room = seat.room
    rebook_url = ""
    profile = getattr(room.expert, "expert_profile", None)
    if profile is not None and by == "expert":
        rebook_url = f"{settings.SITE_URL}{reverse('accounts:expert_detail', args=[profile.slug])}"
    context: dict[str, Any] = {
        "by": by,
        "rebook_url": rebook_url,
        "fee": seat.cancel_fee_minor,
        "fee_text": format_money(seat.cancel_fee_minor, room.currency),
        "free_hours": settings.FREE_CANCELLATION_HOURS,
    }
    subject = f"Canceled: {room.title}"
    _send(
        f"booking-canceled:{seat.pk}:client",
        seat.client,
        f"{subject} on {local_time(room.starts_at, seat.client)}",
        "rooms/email/booking_canceled.txt",
        seat,
        room,
        method="CANCEL",
        is_client=True,
        **context,
    )
    room_canceled = room.state == RoomState.CANCELED
    _send(
        f"room-canceled:{room.pk}:expert" if room_canceled else f"seat-canceled:{seat.pk}:expert",
        room.expert,
        f"{subject} on {local_time(room.starts_at, room.expert)}"
        if room_canceled
        else f"{seat.client.display_name} canceled their seat in {room.title}",
        "rooms/email/booking_canceled.txt",
        seat,
        room,
        method="CANCEL" if room_canceled else "",
        is_client=False,
        room_canceled=room_canceled,
        **context,
    )


def booking_reminder(seat: Seat, label: str) -> int:
    """The client's reminder per seat, the expert's once per room, each unless that person
    turned reminders off (their confirmations and cancellations are sent regardless). The
    room's sequence is in the keys: a moved session gets its reminders again. Each reminder
    carries a one-click unsubscribe (accounts/unsubscribe.py)."""
    room = seat.room
    subject = f"Starting {'soon' if label != '24h' else 'tomorrow'}: {room.title}"
    sent = 0
    for key, person in (
        (f"reminder-{label}:seat{seat.pk}:{room.sequence}", seat.client),
        (f"reminder-{label}:room{room.pk}:{room.sequence}", room.expert),
    ):
        if not person.booking_reminders:
            continue
        created = _send(
            key,
            person,
            subject,
            "rooms/email/booking_reminder.txt",
            seat,
            room,
            headers=reminders_unsubscribe_headers(person.pk),
            unsubscribe_url=reminders_unsubscribe_url(person.pk),
        )
        sent += int(created)
    return sent
