"""Creates the demo people of `make run`, once; running it again keeps (and reprints) them."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote

from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret
from allauth.mfa.utils import decrypt
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services
from accounts.models import ExpertStatus, User
from rooms import services as rooms_services
from rooms.models import AvailabilityRule, Offering, Pricing

# A demo on a laptop, printed on every run: not a secret by design.
DEMO_PASSWORD = "parley-demo"  # noqa: S105

EXPERT_BIO = (
    "Twelve years building and pricing B2B software, from first customer to Series B. "
    "Bring a roadmap, a pricing page or a launch plan; leave with three concrete changes "
    "and the reasoning behind them."
)


DEMO_OFFERINGS: list[dict[str, object]] = [
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


class Command(BaseCommand):
    help = "Create (or keep) the demo expert, client and staff user, and print their logins."

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            staff = self._user("staff@demo.test", "Sam Staff", "UTC", staff=True)
            expert = self._user("expert@demo.test", "Erin Expert", "Europe/Berlin")
            client = self._user("client@demo.test", "Chris Client", "America/New_York")
            secret = self._totp_secret(staff)
            self._approved_expert(expert, staff)
            self._offerings_and_hours(expert)

        uri = (
            f"otpauth://totp/{quote(settings.MFA_TOTP_ISSUER)}:{quote(staff.email)}"
            f"?secret={secret}&issuer={quote(settings.MFA_TOTP_ISSUER)}"
        )
        self.stdout.write(
            f"\nParley demo is ready on {settings.SITE_URL}\n\n"
            f"  expert  {expert.email:<20} password {DEMO_PASSWORD}\n"
            f"  client  {client.email:<20} password {DEMO_PASSWORD}\n"
            f"  staff   {staff.email:<20} password {DEMO_PASSWORD}\n"
            f"          two-factor (TOTP) secret {secret}\n"
            f"          add it to an authenticator app, or: {uri}\n"
        )

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

    def _offerings_and_hours(self, expert: User) -> None:
        if not AvailabilityRule.objects.filter(expert=expert).exists():
            # Monday to Friday, 09:00–12:30 and 14:00–18:00 in the expert's zone.
            rooms_services.availability_replace_weekly(
                expert,
                [
                    (day, start, end)
                    for day in range(5)
                    for start, end in ((dt.time(9), dt.time(12, 30)), (dt.time(14), dt.time(18)))
                ],
            )
        if Offering.objects.filter(expert=expert).exists():
            return
        for fields in DEMO_OFFERINGS:
            rooms_services.offering_save(expert, None, {"currency": "EUR", **fields})

    def _approved_expert(self, expert: User, staff: User) -> None:
        profile = getattr(expert, "expert_profile", None)
        if profile is None:
            profile = services.expert_profile_submit(
                expert,
                headline="Product strategy for early-stage software teams",
                bio=EXPERT_BIO,
                languages=["en", "de"],
                currency="EUR",
                time_zone="Europe/Berlin",
            )
        if profile.status == ExpertStatus.PENDING:
            services.expert_approve(profile.pk, actor=staff)
