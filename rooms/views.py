from __future__ import annotations

import json
import logging
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from channels.db import database_sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import get_token
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.choices import CURRENCIES
from accounts.models import User
from billing.pricing import format_money
from config.ratelimits import post_rate_limited
from rooms import selectors, services
from rooms.availability import Slot
from rooms.errors import RoomsError, SlotTaken
from rooms.forms import (
    GroupSessionForm,
    OfferingForm,
    OverrideForm,
    RatingForm,
    SlotChoiceForm,
    WeeklyAvailabilityForm,
)
from rooms.ice import ice_servers
from rooms.models import (
    AvailabilityOverride,
    AvailabilityRule,
    Offering,
    Rating,
    Room,
    RoomState,
    Seat,
    SeatState,
    Weekday,
)
from rooms.probe import ProbeRefused, probe_answer

logger = logging.getLogger(__name__)


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # noqa: S101
    return request.user


def _participant_room(user: User, room_id: int) -> tuple[Room, Seat | None]:
    """The room behind a join link, for its expert or a client holding a place in it; anyone
    else gets a page that says why (PermissionDenied renders templates/errors/403.html)."""
    room = get_object_or_404(Room.objects.select_related("expert"), pk=room_id)
    seat = Seat.objects.holding_place().filter(room=room, client=user).first()
    if room.expert_id != user.pk and seat is None:
        former = Seat.objects.filter(room=room, client=user).order_by("-pk").first()
        if former is not None:
            raise PermissionDenied(
                f"Your booking of this session is {former.get_state_display().lower()}, so "
                "this link no longer admits you. Your sessions page lists what you have booked."
            )
        raise PermissionDenied(
            "This link is for the expert and the clients booked into this session. If you "
            "booked it, sign in with the account you booked with."
        )
    return room, seat


@login_required
# Not in the request's transaction: a close the catch-up runs settles money, and must commit
# (and let go of the payments' and the room's locks) before the page is rendered.
@transaction.non_atomic_requests
def join(request: HttpRequest, room_id: int) -> HttpResponse:
    """The room page: lobby, preflight, the call and its bill (docs/CALL_PAGE.md)."""
    user = _user(request)
    # The page follows the clock even with no worker running: a lobby whose time has come
    # opens, a room whose close is due closes. First, so the seat read next is what it left.
    _room_caught_up(_participant_room(user, room_id)[0])
    room, seat = _participant_room(user, room_id)
    is_expert = room.expert_id == user.pk
    paid = is_expert or (seat is not None and seat.state == SeatState.CONFIRMED)
    config = {
        "roomId": room.pk,
        "userId": user.pk,
        "role": "expert" if is_expert else "client",
        "socketPath": f"/ws/rooms/{room.pk}/",
        "stateUrl": reverse("rooms:room_state", args=[room.pk]),
        "summaryUrl": reverse("rooms:room_summary", args=[room.pk]),
        "probeUrl": reverse("rooms:probe", args=[room.pk]),
        "seatPaid": paid,
        "csrfToken": get_token(request),
        # For the connectivity test before joining; the call itself gets fresh ones in the
        # socket's welcome. TURN relays cost money: only the expert and paid seats get them.
        "iceServers": ice_servers(
            room_id=room.pk, user_id=user.pk, room_ends_at=room.ends_at, now=timezone.now()
        )
        if paid
        else [],
        **selectors.room_page_state(room),
    }
    return render(
        request,
        "rooms/join.html",
        {
            "room": room,
            "seat": seat,
            "is_expert": is_expert,
            "config": config,
            "people": Seat.objects.filter(room=room, state=SeatState.CONFIRMED).select_related(
                "client"
            ),
            **_summary_context(room, user),
        },
    )


@login_required
@transaction.non_atomic_requests  # as `join`: a close commits before the answer is read
def room_state(request: HttpRequest, room_id: int) -> JsonResponse:
    """The room's state for a page that has no socket yet (before the lobby opens)."""
    room, _ = _participant_room(_user(request), room_id)
    return JsonResponse(selectors.room_page_state(_room_caught_up(room)))


def _room_caught_up(room: Room) -> Room:
    """The room brought up to the clock (`room_catch_up`); as it was if that fails (the
    page still shows, and the sweep tries again)."""
    if room.state not in (RoomState.SCHEDULED, RoomState.OPEN, RoomState.LIVE):
        return room
    try:
        with transaction.atomic():
            return services.room_catch_up(room.pk)
    except Exception:
        logger.exception("Catching room %s up with the clock failed", room.pk)
        return room


@login_required
def room_summary(request: HttpRequest, room_id: int) -> HttpResponse:
    """After the call: why it ended and what it cost, as the fragment the page shows."""
    user = _user(request)
    room, _ = _participant_room(user, room_id)
    return render(request, "rooms/_summary.html", _summary_context(room, user))


@transaction.non_atomic_requests  # an async view cannot run in a request transaction
@require_POST
async def probe(request: HttpRequest, room_id: int) -> JsonResponse:
    """The preflight connectivity test: answer the browser's offer from a server WebRTC peer
    (rooms/probe.py) that echoes its pings. For the room's participants, while it can be
    joined; JSON errors, since the page calls it with fetch."""
    user = await request.auser()
    if not isinstance(user, User):
        return JsonResponse({"error": "Log in to test your connection."}, status=401)
    try:
        room, seat = await database_sync_to_async(_participant_room)(user, room_id)
    except PermissionDenied as refused:
        return JsonResponse({"error": str(refused)}, status=403)
    except Http404:
        return JsonResponse({"error": "There is no such session."}, status=404)
    if room.expert_id != user.pk and (seat is None or seat.state != SeatState.CONFIRMED):
        # The test goes through TURN, a relay that costs money: for paid seats only.
        return JsonResponse(
            {"error": "The connection test is for paid bookings. Pay for your seat first."},
            status=403,
        )
    if room.state in (RoomState.CLOSED, RoomState.CANCELED):
        return JsonResponse({"error": "This session is over."}, status=410)
    try:
        offer = json.loads(request.body)
    except ValueError:
        return JsonResponse({"error": "The test sent a malformed offer (not JSON)."}, status=400)
    servers = ice_servers(
        room_id=room.pk, user_id=user.pk, room_ends_at=room.ends_at, now=timezone.now()
    )
    try:
        answer = await probe_answer(offer=offer, ice_servers=servers, owner=f"u{user.pk}")
    except ProbeRefused as refused:
        return JsonResponse({"error": str(refused)}, status=refused.status)
    return JsonResponse(answer)


@login_required
@require_POST
def room_rate(request: HttpRequest, room_id: int) -> HttpResponse:
    user = _user(request)
    room, _ = _participant_room(user, room_id)
    form = RatingForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose from one to five stars to rate the session.")
        return redirect("rooms:join", room_id=room.pk)
    try:
        services.rating_give(
            room.pk, user, stars=form.cleaned_data["stars"], comment=form.cleaned_data["comment"]
        )
    except RoomsError as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, "Thank you for rating the session.")
    return redirect("rooms:join", room_id=room.pk)


def _summary_context(room: Room, user: User) -> dict[str, Any]:
    if room.state != RoomState.CLOSED:
        return {"summary": None, "room": room}
    rating = Rating.objects.filter(room=room, client=user).first()
    initial = {"stars": rating.stars, "comment": rating.comment} if rating else None
    return {
        "room": room,
        "summary": selectors.room_summary(room, user),
        "rating": rating,
        "rating_form": RatingForm(initial=initial),
    }


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    now = timezone.now()
    return render(
        request,
        "rooms/dashboard.html",
        {
            "upcoming_seats": selectors.client_seats_upcoming(user, now),
            "past_seats": selectors.client_seats_past(user, now),
            "canceled_seats": selectors.client_seats_canceled(user),
            "upcoming_rooms": selectors.expert_rooms_upcoming(user, now),
            "past_rooms": selectors.expert_rooms_past(user, now),
            "canceled_rooms": selectors.expert_rooms_canceled(user),
        },
    )


def _week_window(request: HttpRequest) -> tuple[date, datetime, datetime]:
    """The 7 local days starting at ?from=YYYY-MM-DD (default today) in the viewer's zone."""
    zone = timezone.get_current_timezone()
    today = timezone.localdate()
    try:
        first = date.fromisoformat(request.GET.get("from", ""))
    except ValueError:
        first = today
    # Nothing is bookable beyond a year; clamping also keeps date arithmetic in range.
    first = min(max(first, today), today + timedelta(days=366))
    start = datetime.combine(first, time.min, tzinfo=zone)
    return first, start, datetime.combine(first + timedelta(days=7), time.min, tzinfo=zone)


def _slot_days(slots: list[Slot]) -> list[tuple[date, list[Slot]]]:
    days: dict[date, list[Slot]] = {}
    for slot in slots:
        days.setdefault(timezone.localtime(slot.starts_at).date(), []).append(slot)
    return sorted(days.items())


def _slot_page(
    request: HttpRequest,
    offering: Offering,
    *,
    template_context: dict[str, Any],
    status: int = 200,
) -> HttpResponse:
    first, start, end = _week_window(request)
    slots = selectors.offering_slots(offering, start, end) if offering.is_active else []
    return render(
        request,
        "rooms/slots.html",
        {
            "offering": offering,
            "days": _slot_days(slots),
            "first": first,
            "previous": first - timedelta(days=7),
            "next": first + timedelta(days=7),
            "can_go_back": first > timezone.localdate(),
            "group_rooms": selectors.group_rooms_open_for_seats(offering.expert).filter(
                offering=offering
            ),
            **template_context,
        },
        status=status,
    )


@post_rate_limited("booking")
def offering_book(request: HttpRequest, offering_id: int) -> HttpResponse:
    """Pick a time of an offering (GET) and reserve it (POST)."""
    offering = get_object_or_404(Offering.objects.select_related("expert"), pk=offering_id)
    if request.method != "POST":
        return _slot_page(request, offering, template_context={"action": "book"})
    if not request.user.is_authenticated:
        return redirect(f"{reverse('account_login')}?next={request.path}")
    form = SlotChoiceForm(request.POST)
    if not form.is_valid():
        messages.error(request, str(form.errors["starts_at"][0]))
        return _slot_page(request, offering, template_context={"action": "book"}, status=400)
    try:
        seat = services.booking_reserve(_user(request), offering, form.cleaned_data["starts_at"])
    except SlotTaken as taken:
        messages.error(request, str(taken))
        return _slot_page(
            request,
            offering,
            template_context={"action": "book", "alternatives": sorted(taken.alternatives)},
            status=409,
        )
    except RoomsError as error:
        messages.error(request, str(error))
        return _slot_page(request, offering, template_context={"action": "book"}, status=400)
    return redirect("rooms:seat_confirm", seat.pk)


@login_required
@require_POST
@post_rate_limited("booking")
def group_seat_take(request: HttpRequest, room_id: int) -> HttpResponse:
    room = get_object_or_404(Room, pk=room_id)
    try:
        seat = services.group_seat_reserve(_user(request), room.pk)
    except RoomsError as error:
        messages.error(request, str(error))
        if room.offering_id is not None:
            return redirect("rooms:offering_book", room.offering_id)
        return redirect("accounts:expert_directory")
    return redirect("rooms:seat_confirm", seat.pk)


def _own_seat(request: HttpRequest, seat_id: int) -> Seat:
    seat = get_object_or_404(
        Seat.objects.select_related("room", "room__expert", "room__offering"), pk=seat_id
    )
    if seat.client_id != request.user.pk:
        raise PermissionDenied("This booking belongs to another account.")
    return seat


@login_required
def seat_confirm(request: HttpRequest, seat_id: int) -> HttpResponse:
    """The booking waiting for its payment: what is held, until when, and the way to pay."""
    seat = _own_seat(request, seat_id)
    return render(
        request,
        "rooms/seat_confirm.html",
        {"seat": seat, "expired": selectors.seat_is_expired(seat), "payment": seat.payment},
    )


@login_required
@require_http_methods(["GET", "POST"])
def seat_cancel(request: HttpRequest, seat_id: int) -> HttpResponse:
    seat = _own_seat(request, seat_id)
    if request.method == "POST":
        try:
            expected = int(request.POST.get("expected_fee_minor", ""))
        except ValueError:
            expected = None
        try:
            services.seat_cancel(seat.pk, actor=_user(request), expected_fee_minor=expected)
        except RoomsError as error:
            messages.error(request, str(error))
            return redirect("rooms:dashboard")
        messages.success(request, "Canceled.")
        return redirect("rooms:dashboard")
    fee = selectors.seat_cancellation_fee(seat)
    return render(
        request,
        "rooms/seat_cancel.html",
        {"seat": seat, "fee": fee, "fee_text": format_money(fee, seat.room.currency)},
    )


@login_required
@require_http_methods(["GET", "POST"])
def seat_reschedule(request: HttpRequest, seat_id: int) -> HttpResponse:
    seat = _own_seat(request, seat_id)
    offering = seat.room.offering
    if offering is None:
        raise PermissionDenied("This session cannot be moved.")
    context = {"action": "move", "seat": seat}
    if request.method == "POST":
        form = SlotChoiceForm(request.POST)
        if not form.is_valid():
            messages.error(request, str(form.errors["starts_at"][0]))
            return _slot_page(request, offering, template_context=context, status=400)
        try:
            services.seat_reschedule(
                seat.pk, actor=_user(request), new_start=form.cleaned_data["starts_at"]
            )
        except SlotTaken as taken:
            messages.error(request, str(taken))
            return _slot_page(
                request,
                offering,
                template_context={**context, "alternatives": sorted(taken.alternatives)},
                status=409,
            )
        except RoomsError as error:
            messages.error(request, str(error))
            return _slot_page(request, offering, template_context=context, status=400)
        messages.success(request, "Moved. Both of you get an updated calendar invitation.")
        return redirect("rooms:dashboard")
    return _slot_page(request, offering, template_context=context)


@login_required
@require_http_methods(["GET", "POST"])
def room_cancel(request: HttpRequest, room_id: int) -> HttpResponse:
    room = get_object_or_404(Room, pk=room_id)
    if room.expert_id != request.user.pk:
        raise PermissionDenied("Only the expert of this session can cancel it.")
    if request.method == "POST":
        try:
            services.room_cancel_by_expert(room.pk, actor=_user(request))
        except RoomsError as error:
            messages.error(request, str(error))
            return redirect("rooms:dashboard")
        messages.success(request, "Canceled. Your clients are released in full and told.")
        return redirect("rooms:dashboard")
    return render(request, "rooms/room_cancel.html", {"room": room})


# --- The expert's side: offerings, availability, group sessions ------------------------------


def _approved_expert(request: HttpRequest) -> User:
    user = _user(request)
    if not selectors.expert_is_approved(user):
        raise PermissionDenied(
            "Offerings and availability are for approved experts. Apply from “Become an "
            "expert”; you can set them up once staff approve you."
        )
    return user


@login_required
def expert_offerings(request: HttpRequest) -> HttpResponse:
    expert = _approved_expert(request)
    return render(
        request,
        "rooms/expert_offerings.html",
        {
            "offerings": Offering.objects.filter(expert=expert),
            "zone": selectors.expert_zone(expert),
        },
    )


@login_required
@require_http_methods(["GET", "POST"])
def offering_edit(request: HttpRequest, offering_id: int | None = None) -> HttpResponse:
    expert = _approved_expert(request)
    offering = None
    if offering_id is not None:
        offering = get_object_or_404(Offering, pk=offering_id, expert=expert)
    initial = {}
    if offering is not None:
        digits = CURRENCIES[offering.currency][1]
        initial["price"] = Decimal(offering.price_minor) / (10**digits)
    else:
        profile = selectors.expert_profile(expert)
        initial["currency"] = profile.currency if profile else "EUR"
    form = OfferingForm(request.POST or None, instance=offering, initial=initial)
    if request.method == "POST" and form.is_valid():
        fields = {name: form.cleaned_data[name] for name in OfferingForm.Meta.fields}
        fields["price_minor"] = form.minor_amount()
        try:
            services.offering_save(expert, offering, fields)
        except (RoomsError, ValidationError) as error:
            messages.error(request, " ".join(getattr(error, "messages", [str(error)])))
        else:
            messages.success(request, "Offering saved.")
            return redirect("rooms:expert_offerings")
    return render(request, "rooms/offering_form.html", {"form": form, "offering": offering})


@login_required
@require_http_methods(["GET", "POST"])
def expert_availability(request: HttpRequest) -> HttpResponse:
    expert = _approved_expert(request)
    rules = AvailabilityRule.objects.filter(expert=expert)
    initial = {
        f"day_{day.value}": ", ".join(
            f"{rule.start_time:%H:%M}-{rule.end_time:%H:%M}"
            for rule in rules
            if rule.weekday == day
        )
        for day in Weekday
    }
    weekly = WeeklyAvailabilityForm(request.POST or None, initial=initial, prefix="weekly")
    override = OverrideForm(prefix="override")
    if request.method == "POST" and "weekly-submit" in request.POST:
        if weekly.is_valid():
            try:
                services.availability_replace_weekly(expert, weekly.cleaned_data["intervals"])
            except RoomsError as error:
                messages.error(request, str(error))
            else:
                messages.success(request, "Weekly hours saved.")
                return redirect("rooms:expert_availability")
    elif request.method == "POST":
        weekly = WeeklyAvailabilityForm(initial=initial, prefix="weekly")
        override = OverrideForm(request.POST, prefix="override")
        if override.is_valid():
            data = override.cleaned_data
            try:
                services.availability_override_add(
                    expert,
                    day=data["date"],
                    kind=data["kind"],
                    start=data.get("start_time"),
                    end=data.get("end_time"),
                )
            except ValidationError as error:
                messages.error(request, " ".join(error.messages))
            else:
                messages.success(request, "Date added.")
                return redirect("rooms:expert_availability")
    return render(
        request,
        "rooms/expert_availability.html",
        {
            "weekly": weekly,
            "override": override,
            "zone": selectors.expert_zone(expert),
            "overrides": AvailabilityOverride.objects.filter(
                expert=expert, date__gte=timezone.localdate()
            ),
        },
        status=400 if request.method == "POST" else 200,
    )


@login_required
@require_POST
def override_delete(request: HttpRequest, override_id: int) -> HttpResponse:
    expert = _approved_expert(request)
    override = get_object_or_404(AvailabilityOverride, pk=override_id, expert=expert)
    services.availability_override_delete(expert, override.pk)
    messages.success(request, "Date removed.")
    return redirect("rooms:expert_availability")


@login_required
@require_POST
def group_session_publish(request: HttpRequest, offering_id: int) -> HttpResponse:
    expert = _approved_expert(request)
    offering = get_object_or_404(Offering, pk=offering_id, expert=expert)
    # The expert types a wall-clock time in the zone their availability is kept in.
    form = GroupSessionForm(request.POST, zone=selectors.expert_zone(expert))
    if not form.is_valid():
        messages.error(request, str(form.errors["starts_at"][0]))
        return redirect("rooms:expert_offerings")
    try:
        services.group_room_publish(expert, offering, form.cleaned_data["starts_at"])
    except RoomsError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, "Group session published.")
    return redirect("rooms:expert_offerings")
