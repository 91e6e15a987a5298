"""The demo of `make run`: people, experts with hours and offerings, and a paid session open now.

People and experts are created once and kept (running it again reprints the same logins and
the same TOTP secret). The try-out session is made fresh on every run, because a session is
only worth trying while it is open: the previous run's, if still waiting, is canceled (nothing
charged) or, if a call is under way, ended by its expert, and a new one is booked and paid with
the local payment provider's test card, starting a minute from now. Its lobby is open at once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from allauth.mfa.utils import decrypt
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from accounts import services
from accounts.models import ExpertStatus, User
from billing.errors import BillingError
from billing.gateways.local import TEST_CARD
from billing.services import payment_local_card
from rooms import services as rooms_services
from rooms.errors import RoomsError
from rooms.models import (
    AvailabilityOverride,
    AvailabilityRule,
    Offering,
    OverrideKind,
    Pricing,
    Room,
    RoomKind,
    RoomState,
    SeatState,
)

# A demo on a laptop, printed on every run: not a secret by design.
DEMO_PASSWORD = "parley-demo"  # noqa: S105

STAFF_EMAIL = "staff@demo.test"
CLIENT_EMAIL = "client@demo.test"
SECOND_CLIENT_EMAIL = "client2@demo.test"
EXPERT_EMAIL = "expert@demo.test"

# The session to try a call in: with the demo expert and client, long enough to look around.
TRY_OUT_TITLE = "Try-out call (demo)"
TRY_OUT_MINUTES = 30
# The shortest try-out worth opening when local midnight is near (a slot cannot cross it).
TRY_OUT_MIN_MINUTES = 15

EXPERT_BIO = (
    "Twelve years building and pricing B2B software, from first customer to Series B. "
    "Bring a roadmap, a pricing page or a launch plan; leave with three concrete changes "
    "and the reasoning behind them."
)

MON_FRI = range(5)


@dataclass(frozen=True)
class DemoExpert:
    email: str
    name: str
    zone: str
    currency: str
    headline: str
    bio: str
    languages: list[str]
    # (weekdays, local start, local end)
    hours: list[tuple[range, dt.time, dt.time]]
    offerings: list[dict[str, Any]]
    # A group session published this many days ahead at this local time, if none is upcoming.
    group_session: tuple[int, dt.time] | None = None


DEMO_OFFERINGS: list[dict[str, Any]] = [
    {
        "title": "Product strategy session",
        "description": "A focused review of your roadmap, pricing or launch plan.",
        "length_minutes": 45,
        "pricing": Pricing.FIXED,
        "price_minor": 9000,
        "buffer_after_minutes": 15,
    },
    {
        "title": "Quick question",
        "description": "Pay by the minute for a short, sharp answer.",
        "length_minutes": 20,
        "pricing": Pricing.PER_MINUTE,
        "price_minor": 200,
        "notice_minutes": 30,
    },
    {
        "title": "Pricing clinic (small group)",
        "description": "Three founders, one hour, everyone's pricing page on the table.",
        "length_minutes": 60,
        "pricing": Pricing.FIXED,
        "price_minor": 4000,
        "capacity": 3,
    },
]

DEMO_EXPERTS: list[DemoExpert] = [
    DemoExpert(
        email=EXPERT_EMAIL,
        name="Erin Expert",
        zone="Europe/Berlin",
        currency="EUR",
        headline="Product strategy for early-stage software teams",
        bio=EXPERT_BIO,
        languages=["en", "de"],
        # Monday to Friday, 09:00–12:30 and 14:00–18:00 in the expert's zone.
        hours=[(MON_FRI, dt.time(9), dt.time(12, 30)), (MON_FRI, dt.time(14), dt.time(18))],
        offerings=DEMO_OFFERINGS,
    ),
    DemoExpert(
        email="kenji@demo.test",
        name="Kenji Watanabe",
        zone="Asia/Tokyo",
        currency="JPY",
        headline="Backend architecture and code review, by the minute",
        bio=(
            "Staff engineer on payment systems for a decade. Share your screen and a pull "
            "request or a design doc; pay only for the minutes we talk."
        ),
        languages=["ja", "en"],
        hours=[(range(6), dt.time(10), dt.time(19))],
        offerings=[
            {
                "title": "Code review by the minute",
                "description": "Bring a diff; we read it together. Billed per started minute.",
                "length_minutes": 30,
                "pricing": Pricing.PER_MINUTE,
                "price_minor": 150,
                "notice_minutes": 60,
            },
            {
                "title": "Architecture review",
                "description": "An hour on your system's design, with written follow-ups.",
                "length_minutes": 60,
                "pricing": Pricing.FIXED,
                "price_minor": 18000,
                "buffer_after_minutes": 15,
            },
        ],
    ),
    DemoExpert(
        email="maya@demo.test",
        name="Maya Alvarez",
        zone="America/Los_Angeles",
        currency="USD",
        headline="Product design and portfolio reviews",
        bio=(
            "Design lead at two consumer apps you have probably used. I review portfolios, "
            "onboarding flows and design systems, and tell you what I would change first."
        ),
        languages=["en", "es"],
        hours=[(range(4), dt.time(8), dt.time(15))],
        offerings=[
            {
                "title": "Portfolio review",
                "description": "45 minutes on your portfolio, with a list of changes to make.",
                "length_minutes": 45,
                "pricing": Pricing.FIXED,
                "price_minor": 12000,
                "buffer_before_minutes": 15,
            },
            {
                "title": "Design question",
                "description": "A quick second opinion on a screen or a flow, by the minute.",
                "length_minutes": 20,
                "pricing": Pricing.PER_MINUTE,
                "price_minor": 300,
            },
        ],
    ),
    DemoExpert(
        email="priya@demo.test",
        name="Priya Raman",
        zone="Asia/Kolkata",
        currency="USD",
        headline="Interview practice for engineers and product managers",
        bio=(
            "Hiring manager for eight years. Practise the interview you are afraid of, alone "
            "or in a small group, and hear exactly what an interviewer would note."
        ),
        languages=["en", "hi"],
        hours=[(MON_FRI, dt.time(17), dt.time(21)), (range(5, 7), dt.time(10), dt.time(14))],
        offerings=[
            {
                "title": "Mock interview",
                "description": "A realistic 60-minute interview and 15 minutes of feedback.",
                "length_minutes": 75,
                "pricing": Pricing.FIXED,
                "price_minor": 6000,
            },
            {
                "title": "Interview practice (group of three)",
                "description": "Three candidates take turns; everyone hears the feedback.",
                "length_minutes": 90,
                "pricing": Pricing.FIXED,
                "price_minor": 2500,
                "capacity": 3,
            },
        ],
        group_session=(2, dt.time(18)),
    ),
]

TRY_OUT_OFFERING: dict[str, Any] = {
    "title": TRY_OUT_TITLE,
    "description": "A session to try the call with, made fresh by every `make run`.",
    "length_minutes": TRY_OUT_MINUTES,
    "pricing": Pricing.PER_MINUTE,
    "price_minor": 100,
    "currency": "EUR",
    "notice_minutes": 0,
    "late_cancel_fee_percent": 0,
    "no_show_fee_percent": 0,
    # Listed nowhere: it is made active only while the try-out is booked.
    "is_active": False,
}


@dataclass(frozen=True)
class TryOut:
    room: Room
    url: str


class Command(BaseCommand):
    help = (
        "Create (or keep) the demo people and experts, book a fresh paid session open now, "
        "and print the logins and the session's link."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            staff = self._user(STAFF_EMAIL, "Sam Staff", "UTC", staff=True)
            client = self._user(CLIENT_EMAIL, "Chris Client", "America/New_York")
            self._user(SECOND_CLIENT_EMAIL, "Dana Client", "Europe/London")
            secret = self._totp_secret(staff)
            experts = [self._expert(spec, staff) for spec in DEMO_EXPERTS]
        expert = experts[0]
        try_out = self._try_out(expert, client, staff)

        uri = (
            f"otpauth://totp/{quote(settings.MFA_TOTP_ISSUER)}:{quote(staff.email)}"
            f"?secret={secret}&issuer={quote(settings.MFA_TOTP_ISSUER)}"
        )
        others = ", ".join(spec.email for spec in DEMO_EXPERTS[1:])
        self.stdout.write(
            f"\nParley demo is ready on {settings.SITE_URL}\n\n"
            f"  expert  {expert.email:<20} password {DEMO_PASSWORD}\n"
            f"  client  {client.email:<20} password {DEMO_PASSWORD}\n"
            f"  client  {SECOND_CLIENT_EMAIL:<20} password {DEMO_PASSWORD}\n"
            f"  staff   {staff.email:<20} password {DEMO_PASSWORD}\n"
            f"          two-factor (TOTP) secret {secret}\n"
            f"          add it to an authenticator app, or: {uri}\n"
            f"  more experts (same password): {others}\n"
        )
        if try_out is not None:
            room = try_out.room
            self.stdout.write(
                f"\n{_try_out_heading(room)}: {room.title}, "
                f"{room.starts_at:%H:%M}–{room.ends_at:%H:%M} UTC, paid, {_try_out_state(room)}.\n"
                f"Open the two links in two browsers (or one in a private window), log in, "
                f"and join:\n"
                f"  client  {try_out.url}  log in as {client.email} / {DEMO_PASSWORD}\n"
                f"  expert  {try_out.url}  log in as {expert.email} / {DEMO_PASSWORD}\n"
            )

    # --- people -----------------------------------------------------------------------------

    def _user(self, email: str, name: str, zone: str, *, staff: bool = False) -> User:
        user = User.objects.filter(email=email).first()
        if user is None:
            user = User.objects.create_user(
                email,
                DEMO_PASSWORD,
                display_name=name,
                time_zone=zone,
                is_staff=staff,
                is_superuser=staff,
            )
        EmailAddress.objects.update_or_create(
            user=user, email=email, defaults={"verified": True, "primary": True}
        )
        return user

    def _totp_secret(self, staff: User) -> str:
        authenticator = Authenticator.objects.filter(
            user=staff, type=Authenticator.Type.TOTP
        ).first()
        if authenticator is not None:
            return str(decrypt(authenticator.data["secret"]))
        secret = str(generate_totp_secret())
        TOTP.activate(staff, secret)
        return secret

    # --- experts ----------------------------------------------------------------------------

    def _expert(self, spec: DemoExpert, staff: User) -> User:
        expert = self._user(spec.email, spec.name, spec.zone)
        profile = getattr(expert, "expert_profile", None)
        if profile is None:
            profile = services.expert_profile_submit(
                expert,
                headline=spec.headline,
                bio=spec.bio,
                languages=spec.languages,
                currency=spec.currency,
                time_zone=spec.zone,
            )
        if profile.status == ExpertStatus.PENDING:
            services.expert_approve(profile.pk, actor=staff)
        if not AvailabilityRule.objects.filter(expert=expert).exists():
            rooms_services.availability_replace_weekly(
                expert,
                [(day, start, end) for days, start, end in spec.hours for day in days],
            )
        listed = Offering.objects.filter(expert=expert).exclude(title=TRY_OUT_TITLE)
        if not listed.exists():
            for fields in spec.offerings:
                rooms_services.offering_save(expert, None, {"currency": spec.currency, **fields})
        self._group_session(expert, spec)
        return expert

    def _group_session(self, expert: User, spec: DemoExpert) -> None:
        """One upcoming group session with free seats, so the directory shows how they look."""
        if spec.group_session is None:
            return
        now = timezone.now()
        upcoming = Room.objects.filter(
            expert=expert, kind=RoomKind.GROUP, state=RoomState.SCHEDULED, starts_at__gt=now
        )
        if upcoming.exists():
            return
        offering = Offering.objects.filter(expert=expert, capacity__gt=1, is_active=True).first()
        if offering is None:
            return
        days_ahead, local_time = spec.group_session
        zone = ZoneInfo(spec.zone)
        day = now.astimezone(zone).date() + dt.timedelta(days=days_ahead)
        starts_at = dt.datetime.combine(day, local_time, tzinfo=zone)
        try:
            rooms_services.group_room_publish(expert, offering, starts_at)
        except RoomsError as refused:
            self.stderr.write(f"No demo group session for {expert.email}: {refused}")

    # --- the try-out session ----------------------------------------------------------------

    def _try_out(self, expert: User, client: User, staff: User) -> TryOut | None:
        """Retire the previous run's try-out and book a new one, paid and open now."""
        offering = Offering.objects.filter(expert=expert, title=TRY_OUT_TITLE).first()
        if offering is None:
            offering = rooms_services.offering_save(expert, None, dict(TRY_OUT_OFFERING))
        kept = self._try_outs_retire(offering, expert, staff)
        if kept is not None:
            return TryOut(room=kept, url=_join_url(kept))
        # An ended try-out frees the rest of its time (a closed room blocks the expert's
        # calendar only up to its close, `rooms_blocking`): the next one starts right away.
        earliest = timezone.now() + dt.timedelta(minutes=1)
        start, minutes = try_out_slot(earliest, ZoneInfo(expert.time_zone))
        try:
            with transaction.atomic():
                # For the length of the booking only, the expert's calendar that day is the
                # try-out alone (a day off plus extra hours: the weekly hours would put the
                # slots on their own grid) and the offering is bookable; then both are undone,
                # so nothing else ever becomes bookable through them.
                local = start.astimezone(ZoneInfo(expert.time_zone))
                day_off = None
                if not AvailabilityOverride.objects.filter(
                    expert=expert, date=local.date(), kind=OverrideKind.DAY_OFF
                ).exists():
                    day_off = rooms_services.availability_override_add(
                        expert, day=local.date(), kind=OverrideKind.DAY_OFF, start=None, end=None
                    )
                extra = rooms_services.availability_override_add(
                    expert,
                    day=local.date(),
                    kind=OverrideKind.EXTRA,
                    start=local.time(),
                    end=(local + dt.timedelta(minutes=minutes)).time(),
                )
                offering = rooms_services.offering_save(
                    expert, offering, {"is_active": True, "length_minutes": minutes}
                )
                seat = rooms_services.booking_reserve(client, offering, start)
                for override in (extra, day_off):
                    if override is not None:
                        rooms_services.availability_override_delete(expert, override.pk)
                rooms_services.offering_save(expert, offering, {"is_active": False})
            # The card form's step, outside any transaction as a request would run it.
            if seat.payment_id is None:
                raise RoomsError("The try-out seat has no payment to pay.")
            payment_local_card(seat.payment_id, card_number=TEST_CARD)
        except (RoomsError, BillingError) as refused:
            # The demo's people and experts are there; `make run` goes on without a try-out.
            self.stderr.write(f"No try-out session this time: {refused}")
            return None
        seat.refresh_from_db()
        if seat.state != SeatState.CONFIRMED:
            self.stderr.write(f"The try-out seat was not confirmed (it is {seat.state}).")
            return None
        # Opens the lobby now instead of at the worker's next tick.
        room = rooms_services.room_catch_up(seat.room_id)
        return TryOut(room=room, url=_join_url(room))

    def _try_outs_retire(self, offering: Offering, expert: User, staff: User) -> Room | None:
        """The previous runs' try-outs stop being sessions to join: one waiting is canceled
        with nothing charged. One in a call goes on if enough of it is left (it is returned,
        to be printed again), else its expert ends it (billed as any call)."""
        current = Room.objects.filter(offering=offering).exclude(
            state__in=(RoomState.CLOSED, RoomState.CANCELED)
        )
        kept = None
        for room in current.order_by("-starts_at"):
            left = room.ends_at - timezone.now()
            if room.state != RoomState.LIVE:
                rooms_services.room_cancel_by_staff(room.pk, actor=staff)
            elif kept is None and left >= dt.timedelta(minutes=TRY_OUT_MIN_MINUTES):
                kept = room
            else:
                rooms_services.room_end_by_expert(room.pk, expert)
        return kept


def _try_out_heading(room: Room) -> str:
    return "Try a call now" if room.state in (RoomState.OPEN, RoomState.LIVE) else "Try a call"


def _try_out_state(room: Room) -> str:
    """What the try-out's room is, read from its state (never assumed from how it was booked)."""
    if room.state == RoomState.LIVE:
        return "its call is under way"
    if room.state == RoomState.OPEN:
        return "lobby open"
    if room.state == RoomState.SCHEDULED:
        opens = room.starts_at - dt.timedelta(minutes=settings.LOBBY_OPENS_MINUTES)
        # Never the words "lobby open" for a lobby that is not.
        return (
            f"not open yet: it lets you in from {opens:%H:%M} UTC (in {_minutes_until(opens)} min)"
        )
    return f"the session is {room.get_state_display().lower()}"


def _minutes_until(moment: dt.datetime) -> int:
    return max(0, -(-int((moment - timezone.now()).total_seconds()) // 60))


def _join_url(room: Room) -> str:
    return settings.SITE_URL + reverse("rooms:join", args=[room.pk])


def try_out_slot(earliest: dt.datetime, zone: ZoneInfo) -> tuple[dt.datetime, int]:
    """When the try-out starts and how many minutes it lasts: the first whole minute from
    `earliest`, for TRY_OUT_MINUTES. A slot cannot cross the expert's local midnight, so near it
    the session is shorter (at least TRY_OUT_MIN_MINUTES), or starts at midnight."""
    start = earliest.replace(second=0, microsecond=0)
    if start < earliest:
        start += dt.timedelta(minutes=1)
    local = start.astimezone(zone)
    midnight = dt.datetime.combine(local.date() + dt.timedelta(days=1), dt.time(), tzinfo=zone)
    # Times on the local calendar: a slot ends by 23:59 of its day.
    left = int((midnight - local).total_seconds() // 60) - 1
    if left >= TRY_OUT_MINUTES:
        return start, TRY_OUT_MINUTES
    if left >= TRY_OUT_MIN_MINUTES:
        return start, left
    return midnight.astimezone(dt.UTC), TRY_OUT_MINUTES
