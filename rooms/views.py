from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.models import User
from billing.pricing import format_money
from rooms import selectors, services
from rooms.availability import Slot
from rooms.errors import RoomsError, SlotTaken
from rooms.forms import SlotChoiceForm
from rooms.models import Offering, Room, RoomState, Seat, SeatState


def _user(request: HttpRequest) -> User:
    assert isinstance(request.user, User)  # noqa: S101
    return request.user


@login_required
def join(request: HttpRequest, room_id: int) -> HttpResponse:
    room = get_object_or_404(Room.objects.select_related("expert"), pk=room_id)
    user = _user(request)
    seat = Seat.objects.holding_place().filter(room=room, client=user).first()
    if room.expert_id != user.pk and seat is None:
        raise PermissionDenied(
            "This link is for the expert and the clients booked into this session. If you "
            "booked it, sign in with the account you booked with."
        )
    return render(
        request,
        "rooms/join.html",
        {
            "room": room,
            "seat": seat,
            "is_expert": room.expert_id == user.pk,
            "people": Seat.objects.filter(room=room, state=SeatState.CONFIRMED).select_related(
                "client"
            ),
        },
    )


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    user = _user(request)
    now = timezone.now()
    seats = Seat.objects.filter(client=user).select_related("room", "room__expert")
    rooms = Room.objects.filter(expert=user).prefetch_related("seats__client")
    live = (RoomState.SCHEDULED, RoomState.OPEN, RoomState.LIVE)
    return render(
        request,
        "rooms/dashboard.html",
        {
            "upcoming_seats": seats.filter(
                state__in=(SeatState.CONFIRMED, SeatState.RESERVED),
                room__state__in=live,
                room__ends_at__gt=now,
            ),
            "past_seats": seats.filter(state=SeatState.CONFIRMED)
            .exclude(room__state__in=(RoomState.CANCELED,))
            .filter(room__ends_at__lte=now)
            .order_by("-room__starts_at"),
            "canceled_seats": seats.filter(state=SeatState.CANCELED).order_by("-room__starts_at"),
            "upcoming_rooms": rooms.filter(state__in=live, ends_at__gt=now),
            "past_rooms": rooms.filter(ends_at__lte=now)
            .exclude(state=RoomState.CANCELED)
            .order_by("-starts_at"),
            "canceled_rooms": rooms.filter(state=RoomState.CANCELED).order_by("-starts_at"),
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
    first = max(first, today)
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
            template_context={"action": "book", "alternatives": taken.alternatives},
            status=409,
        )
    except RoomsError as error:
        messages.error(request, str(error))
        return _slot_page(request, offering, template_context={"action": "book"}, status=400)
    return redirect("rooms:seat_confirm", seat.pk)


@login_required
@require_POST
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
@require_http_methods(["GET", "POST"])
def seat_confirm(request: HttpRequest, seat_id: int) -> HttpResponse:
    """Confirm a reservation. The payment step takes its place once payments exist."""
    seat = _own_seat(request, seat_id)
    if request.method == "POST":
        try:
            services.seat_confirm(seat.pk, actor=_user(request))
        except RoomsError as error:
            messages.error(request, str(error))
            return render(request, "rooms/seat_confirm.html", {"seat": seat}, status=409)
        messages.success(
            request, "Booked. A confirmation with a calendar invitation is on its way."
        )
        return redirect("rooms:join", seat.room_id)
    return render(
        request,
        "rooms/seat_confirm.html",
        {"seat": seat, "expired": selectors.seat_is_expired(seat)},
    )


@login_required
@require_http_methods(["GET", "POST"])
def seat_cancel(request: HttpRequest, seat_id: int) -> HttpResponse:
    seat = _own_seat(request, seat_id)
    if request.method == "POST":
        try:
            services.seat_cancel(seat.pk, actor=_user(request))
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
                template_context={**context, "alternatives": taken.alternatives},
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
