"""What the people of a session do about it: report it, block the other side, dispute what it
cost; and their list of blocks. The room page calls report and block with fetch during the call
(`Accept: application/json`: a JSON answer, 400 with the reason when refused); the forms after
the call post normally and come back to the room page with a message."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from accounts.models import Block, User
from billing.models import Settlement
from config.ratelimits import post_rate_limited
from moderation import services
from moderation.forms import (
    BlockForm,
    DisputeForm,
    ReportForm,
    SessionPeople,
    form_problems,
    session_people,
)
from rooms.models import Room, RoomKind, RoomState, Seat

NOT_YOURS = "There is no such session among yours."


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # noqa: S101
    return request.user


def _wants_json(request: HttpRequest) -> bool:
    # A browser's own form post prefers HTML (its Accept lists text/html first); the page's
    # fetch asks for JSON only.
    return request.get_preferred_type(["text/html", "application/json"]) == "application/json"


def _in_session(request: HttpRequest, room_id: int) -> tuple[Room, SessionPeople]:
    """The room and whom its viewer may act on; 404 for anyone who was not in it (a stranger
    learns nothing about a session, not even that it exists)."""
    room = Room.objects.select_related("expert").filter(pk=room_id).first()
    people = session_people(room, _user(request)) if room is not None else None
    if room is None or people is None:
        raise Http404(NOT_YOURS)
    return room, people


def _refused(request: HttpRequest, room: Room, message: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": message}, status=400)
    messages.error(request, message)
    return redirect("rooms:join", room_id=room.pk)


def _done(request: HttpRequest, room: Room, message: str, **data: Any) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"message": message, **data})
    messages.success(request, message)
    return redirect("rooms:join", room_id=room.pk)


def _not_yours(request: HttpRequest) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse({"error": NOT_YOURS}, status=404)
    raise Http404(NOT_YOURS)


@login_required
@require_POST
@post_rate_limited("report")
def report(request: HttpRequest, room_id: int) -> HttpResponse:
    """Report a session to staff, from its page (during the call, or after it)."""
    try:
        room, people = _in_session(request, room_id)
    except Http404:
        return _not_yours(request)
    form = ReportForm(request.POST, choices=people.choices)
    if not form.is_valid():
        return _refused(request, room, f"The report was not sent. {form_problems(form)}")
    try:
        services.report_file(
            room.pk,
            _user(request),
            category=form.cleaned_data["category"],
            text=form.cleaned_data["text"],
            about=form.person(),
        )
    except services.ModerationError as refused:
        return _refused(request, room, f"The report was not sent. {refused}")
    return _done(request, room, "Sent to staff. Thank you: they will look at your report.")


@login_required
@require_POST
@post_rate_limited("block")
def block(request: HttpRequest, room_id: int) -> HttpResponse:
    """Block the other side of a session (the expert of a group session names the client in
    `user`). A session of the two that is running ends for them at once (services.block_create)."""
    try:
        room, people = _in_session(request, room_id)
    except Http404:
        return _not_yours(request)
    user = _user(request)
    form = BlockForm(request.POST, choices=people.choices)
    if not form.is_valid():
        return _refused(request, room, f"Nobody was blocked. {form_problems(form)}")
    target = form.person() or people.other
    if target is None:
        return _refused(request, room, "Nobody was blocked: nobody else booked this session.")
    already = Block.objects.filter(blocker=user, blocked=target).exists()
    running = room.state in (RoomState.OPEN, RoomState.LIVE)
    try:
        services.block_create(user, target.pk, reason=form.cleaned_data["reason"])
    except services.ModerationError as refused:
        return _refused(request, room, f"Nobody was blocked. {refused}")
    blocked = {"id": target.pk, "name": target.display_name}
    if already:
        return _done(
            request, room, f"You had already blocked {target.display_name}.", blocked=blocked
        )
    # What the blocker's page does next: the call ended for both (a private session), the
    # blocker left a group session (a client), or the blocked client left it (the expert).
    outcome = "none"
    if running and room.kind == RoomKind.PRIVATE:
        outcome = "ended"
    elif running:
        outcome = "peer_removed" if people.is_expert else "removed"
    if _wants_json(request):
        return JsonResponse(
            {
                "message": f"You blocked {target.display_name}.",
                "outcome": outcome,
                "blocked": blocked,
            }
        )
    messages.success(
        request,
        f"You blocked {target.display_name}: neither of you can book or join the other's "
        "sessions. You can undo it from your list of blocked people.",
    )
    return redirect("rooms:join", room_id=room.pk)


@login_required
def blocks(request: HttpRequest) -> HttpResponse:
    """The people the user has blocked, each with a way to undo it."""
    made = Block.objects.filter(blocker=_user(request)).select_related("blocked")
    return render(request, "moderation/blocks.html", {"blocks": made.order_by("-created_at")})


@login_required
@require_POST
def unblock(request: HttpRequest, user_id: int) -> HttpResponse:
    """Lift one's own block; back to where the button was (`next`), or the list.

    The name is read through the viewer's own block: anyone else's id gets one answer that
    names nobody, so the URL cannot be used to learn who an id is, or whether it exists."""
    user = _user(request)
    own = Block.objects.filter(blocker=user, blocked_id=user_id).select_related("blocked").first()
    if own is not None and services.block_remove(user, user_id):
        messages.success(request, f"You unblocked {own.blocked.display_name}.")
    else:
        messages.info(request, "That person is not on your list of blocked people.")
    back = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        back = reverse("moderation:blocks")
    return redirect(back)


def _seat_to_dispute(room: Room, client: User) -> Seat | None:
    """The viewer's own seat in the room that a dispute is about: the one charged, if one was;
    never a seat named in the form (a client only ever disputes their own)."""
    seats = list(Seat.objects.filter(room=room, client=client).order_by("-pk"))
    charged = set(
        Settlement.objects.filter(
            payment_id__in=[seat.payment_id for seat in seats if seat.payment_id],
            amount_minor__gt=0,
        ).values_list("payment_id", flat=True)
    )
    return next((seat for seat in seats if seat.payment_id in charged), None) or next(
        iter(seats), None
    )


@login_required
@require_POST
@post_rate_limited("dispute")
def dispute(request: HttpRequest, room_id: int) -> HttpResponse:
    """A client disputes what their seat in this session cost (services.dispute_open)."""
    try:
        room, people = _in_session(request, room_id)
    except Http404:
        return _not_yours(request)
    user = _user(request)
    if people.is_expert:
        return _refused(
            request, room, "Only a client disputes a charge; an expert's payout waits for staff."
        )
    seat = _seat_to_dispute(room, user)
    if seat is None:  # a client of the room has a seat: this is a race with nothing to win
        return _not_yours(request)
    form = DisputeForm(request.POST)
    if not form.is_valid():
        return _refused(request, room, f"The dispute was not sent. {form_problems(form)}")
    try:
        opened = services.dispute_open(
            seat.pk, user, reason=form.cleaned_data["reason"], text=form.cleaned_data["text"]
        )
    except services.ModerationError as refused:
        return _refused(request, room, f"The dispute was not sent. {refused}")
    return _done(
        request,
        room,
        "Your dispute was sent to Parley staff. You will get an email when they decide; "
        "their decision and note will also show on this page.",
        dispute={"id": opened.pk, "state": opened.state},
    )
