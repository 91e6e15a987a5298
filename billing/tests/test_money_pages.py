"""What people read about money: the bill in money, the receipt (page and email, built once),
the expert's earnings after refunds and chargebacks (page and CSV), and the pay page's answers
to a card it cannot take."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, time

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from accounts import services as account_services
from accounts.models import OutboundEmail, User
from accounts.tests.factories import StaffFactory, UserFactory
from billing import selectors, services
from billing.models import Payment, Settlement
from billing.services.receipts import receipt_email_queue
from billing.services.webhooks import WEBHOOK_HANDLERS
from billing.tests.helpers import commands_run_pending
from rooms.models import Pricing, Seat
from rooms.tests.factories import (
    OfferingFactory,
    expert_create,
    room_closed_after_a_call,
    seat_booked,
    weekdays_available,
)

pytestmark = pytest.mark.django_db

CARD = {"number": "4242 4242 4242 4242", "expiry": "12/39", "cvc": "123"}


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _charged_call() -> Seat:
    """A per-minute session at 1.00 EUR a started minute (at most 60.00 EUR), 150 s connected,
    settled at 3.00 EUR and captured at the provider. The client reads Berlin time, the expert
    Los Angeles time."""
    expert = expert_create(time_zone="America/Los_Angeles", display_name="Erin Expert")
    weekdays_available(expert, start=time(0), end=time(23))
    offering = OfferingFactory.create(expert=expert, pricing=Pricing.PER_MINUTE, price_minor=100)
    seat = seat_booked(offering)
    User.objects.filter(pk=seat.client_id).update(
        display_name="Carl Client", time_zone="Europe/Berlin"
    )
    room_closed_after_a_call(seat)
    commands_run_pending()
    seat.refresh_from_db()
    return seat


def _payment(seat: Seat) -> Payment:
    assert seat.payment_id is not None
    return Payment.objects.select_related("payer", "payee").get(pk=seat.payment_id)


# --- the bill -----------------------------------------------------------------------------------


def test_the_after_call_summary_says_the_bill_in_money() -> None:
    seat = _charged_call()
    page = _signed_in(seat.client).get(reverse("rooms:room_summary", args=[seat.room_id]))
    text = page.content.decode()
    assert "150 s connected → 3 started minutes × 1.00 EUR = 3.00 EUR." in text
    assert "under 60 seconds connected is free" in text
    assert reverse("billing:receipt", args=[seat.payment_id]) in text


def test_a_settlement_written_before_explanations_spoke_money_is_explained_in_money() -> None:
    payment = _payment(_charged_call())
    Settlement.objects.filter(payment=payment).update(
        explanation="150 s connected = 3 started min × 100 = 300 → 300."
    )
    settlement = Settlement.objects.get(payment=payment)
    assert selectors.settlement_explanation(settlement) == (
        "150 s connected → 3 started minutes × 1.00 EUR = 3.00 EUR."
    )


def test_the_offerings_and_the_pay_page_state_the_free_minute_and_the_cap() -> None:
    seat = _charged_call()
    profile = seat.room.expert.expert_profile
    text = Client().get(reverse("accounts:expert_detail", args=[profile.slug])).content.decode()
    assert "under 60 seconds is free" in text
    payment = services.payment_open(
        payer=seat.client,
        payee=seat.room.expert,
        amount_minor=6000,
        currency="EUR",
        description="Architecture review",
    )
    text = _signed_in(seat.client).get(reverse("billing:pay", args=[payment.pk])).content.decode()
    assert "Under 60 seconds connected is free" in text
    assert "never charged more than the hold of 60.00 EUR" in text


# --- the receipt --------------------------------------------------------------------------------


def test_the_receipt_page_shows_the_facts_of_the_charge_in_the_clients_zone() -> None:
    seat = _charged_call()
    payment = _payment(seat)
    text = _signed_in(seat.client).get(reverse("billing:receipt", args=[payment.pk])).content
    page = text.decode()
    assert "Architecture review with Erin Expert" in page
    # The session started at 14:00 UTC: 15:00 in Berlin.
    assert "Tuesday 1 December 2026, 15:00 (Europe/Berlin)" in page
    assert 'id="receipt-seconds">150 s<' in page
    assert "3 started minutes × 1.00 EUR = 3.00 EUR" in page
    assert "Under 60 seconds connected is free" in page
    assert 'id="receipt-charged" data-amount-minor="300"' in page
    assert 'id="receipt-released" data-amount-minor="5700"' in page
    assert "css/receipt.css" in page


def test_the_receipt_lists_a_refund_and_what_was_paid_in_the_end() -> None:
    seat = _charged_call()
    payment = _payment(seat)
    services.payment_refund(
        payment.pk, amount_minor=100, currency="EUR", reason="Video froze", actor=None
    )
    commands_run_pending()
    receipt = selectors.receipt_of(Payment.objects.get(pk=payment.pk))
    assert receipt is not None
    assert [(r.amount_minor, r.reason) for r in receipt.refunds] == [(100, "Video froze")]
    assert (receipt.charged_minor, receipt.refunded_minor, receipt.paid_minor) == (300, 100, 200)


def test_only_the_payer_and_staff_see_a_receipt_and_none_exists_before_a_charge() -> None:
    seat = _charged_call()
    url = reverse("billing:receipt", args=[seat.payment_id])
    assert _signed_in(seat.room.expert).get(url).status_code == 403
    assert _signed_in(UserFactory.create()).get(url).status_code == 403
    assert _signed_in(StaffFactory.create()).get(url).status_code == 200
    assert Client().get(url).status_code == 302  # to the login page
    unpaid = services.payment_open(
        payer=seat.client,
        payee=seat.room.expert,
        amount_minor=6000,
        currency="EUR",
        description="Architecture review",
    )
    response = _signed_in(seat.client).get(reverse("billing:receipt", args=[unpaid.pk]))
    assert response.status_code == 404


def test_the_receipt_is_emailed_once_when_the_provider_confirms_the_capture() -> None:
    seat = _charged_call()
    payment = _payment(seat)
    emails = OutboundEmail.objects.filter(key=f"payment-{payment.pk}-receipt")
    assert emails.count() == 1
    email = emails.get()
    assert email.to == seat.client.email
    assert "Architecture review with Erin Expert" in email.subject
    # The capture wrote one row; the receipt is built and rendered when it is sent, outside
    # the capture's transaction.
    assert email.renderer == "billing.receipt" and email.body == ""
    assert account_services.email_send(email.pk)
    email.refresh_from_db()
    assert "Tuesday 1 December 2026, 15:00 (Europe/Berlin)" in email.body
    assert "150 s connected → 3 started minutes × 1.00 EUR = 3.00 EUR." in email.body
    assert "Charged:            3.00 EUR" in email.body
    assert "Released:           57.00 EUR" in email.body
    assert reverse("billing:receipt", args=[payment.pk]) in email.body
    # The same capture heard again (a webhook after the command's own answer) sends nothing.
    assert receipt_email_queue(payment) is False
    assert emails.count() == 1


def test_no_receipt_is_emailed_while_the_capture_is_only_decided() -> None:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert, pricing=Pricing.PER_MINUTE, price_minor=100)
    seat = seat_booked(offering)
    room_closed_after_a_call(seat)  # the capture command is written, not yet sent
    assert not OutboundEmail.objects.filter(key=f"payment-{seat.payment_id}-receipt").exists()


# --- the expert's earnings -----------------------------------------------------------------------


def test_earnings_after_a_refund_show_the_reduced_share_and_the_month_total() -> None:
    seat = _charged_call()
    payment = _payment(seat)
    expert = seat.room.expert
    services.payment_refund(
        payment.pk, amount_minor=100, currency="EUR", reason="Video froze", actor=None
    )
    commands_run_pending()
    [earning] = selectors.earnings_of_payee(expert)
    # 3.00 charged, 1.00 refunded: the fee is 15 % of the 2.00 kept, the share the rest.
    assert (earning.charged_minor, earning.refunded_minor) == (300, 100)
    assert (earning.fee_minor, earning.share_minor) == (30, 170)
    assert earning.session == "Architecture review with Carl Client"
    text = _signed_in(expert).get(reverse("billing:payouts")).content.decode()
    assert "Architecture review with Carl Client" in text
    assert "Erin Expert" not in text.split("<h2>Earnings</h2>")[1]
    assert 'class="share" data-amount-minor="170"' in text
    assert 'class="month-total" data-amount-minor="170"' in text
    assert "Total December 2026" in text
    assert "Times are in America/Los_Angeles" in text
    assert reverse("billing:payouts_csv") in text


def test_a_lost_chargeback_pays_nothing_and_an_open_one_holds_the_share() -> None:
    seat = _charged_call()
    payment = _payment(seat)
    dispute = {"id": "dp_1", "payment_intent": payment.intent_id, "amount": 300}
    WEBHOOK_HANDLERS["charge.dispute.created"](payment.provider, dispute)
    [earning] = selectors.earnings_of_payee(seat.room.expert)
    assert earning.held and earning.share_minor == 255
    assert "chargeback" in earning.status
    [month] = selectors.earnings_by_month([earning])
    assert (month.share_minor, month.held_minor) == (0, 255)
    WEBHOOK_HANDLERS["charge.dispute.closed"](payment.provider, {**dispute, "status": "lost"})
    [earning] = selectors.earnings_of_payee(seat.room.expert)
    assert (earning.held, earning.share_minor) == (False, 0)


def test_the_earnings_csv_has_the_numbers_and_the_experts_own_zone() -> None:
    seat = _charged_call()
    payment = _payment(seat)
    services.payment_refund(
        payment.pk, amount_minor=100, currency="EUR", reason="Video froze", actor=None
    )
    commands_run_pending()
    response = _signed_in(seat.room.expert).get(reverse("billing:payouts_csv"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="parley-earnings-')
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][3] == "Session start (America/Los_Angeles)"
    header = dict(zip(rows[0], rows[1], strict=True))
    assert header["Session"] == "Architecture review with Carl Client"
    assert header["Client"] == "Carl Client"
    # 14:00 UTC is 06:00 in Los Angeles.
    assert header["Session start (America/Los_Angeles)"] == "2026-12-01 06:00"
    assert (header["Charged"], header["Refunded"], header["Platform fee"]) == (
        "3.00",
        "1.00",
        "0.30",
    )
    assert header["Your share"] == "1.70"
    assert header["Currency"] == "EUR"


def test_a_csv_cell_that_would_be_a_formula_is_kept_as_text() -> None:
    seat = _charged_call()
    User.objects.filter(pk=seat.client_id).update(display_name="=HYPERLINK(1)")
    response = _signed_in(seat.room.expert).get(reverse("billing:payouts_csv"))
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[1][2] == "'=HYPERLINK(1)"


def test_the_earnings_csv_is_for_approved_experts_only() -> None:
    assert _signed_in(UserFactory.create()).get(reverse("billing:payouts_csv")).status_code == 403


# --- the pay page --------------------------------------------------------------------------------


def _reserved(expert_zone: str = "UTC") -> Seat:
    from rooms import services as rooms_services

    expert = expert_create(time_zone=expert_zone)
    weekdays_available(expert)
    offering = OfferingFactory.create(expert=expert)
    with time_machine.travel(datetime(2026, 12, 1, 8, 0, tzinfo=UTC), tick=False):
        return rooms_services.booking_reserve(
            UserFactory.create(time_zone="America/Los_Angeles"),
            offering,
            datetime(2026, 12, 1, 14, 0, tzinfo=UTC),
        )


def test_the_pay_page_says_the_session_time_in_the_payers_zone() -> None:
    seat = _reserved()
    text = _signed_in(seat.client).get(reverse("billing:pay", args=[seat.payment_id])).content
    page = text.decode()
    assert "Tuesday 1 December 2026, 06:00 (America/Los_Angeles)" in page
    assert "UTC" not in page.split('<dl class="facts">')[1].split("</dl>")[0]


def test_a_declined_card_is_told_once() -> None:
    seat = _reserved()
    response = _signed_in(seat.client).post(
        reverse("billing:pay", args=[seat.payment_id]), {**CARD, "number": "4000 0000 0000 0002"}
    )
    assert response.status_code == 400
    assert response.content.decode().count("Your card was declined") == 1


def test_a_card_sent_to_an_expired_reservation_is_answered_with_a_way_to_pick_another_time() -> (
    None
):
    seat = _reserved()
    from rooms import services as rooms_services

    with time_machine.travel(datetime(2026, 12, 1, 8, 30, tzinfo=UTC), tick=False):
        rooms_services.reservations_expire()
    response = _signed_in(seat.client).post(reverse("billing:pay", args=[seat.payment_id]), CARD)
    assert response.status_code == 409
    page = response.content.decode()
    assert "no longer waiting for payment" in page
    assert "nothing was charged" in page
    profile = seat.room.expert.expert_profile
    assert (
        f'id="pick-another-time" href="{reverse("accounts:expert_detail", args=[profile.slug])}"'
        in page
    )


def test_a_card_sent_to_a_payment_already_charged_is_told_so() -> None:
    seat = _charged_call()
    response = _signed_in(seat.client).post(reverse("billing:pay", args=[seat.payment_id]), CARD)
    assert response.status_code == 409
    page = response.content.decode()
    assert "already charged (3.00 EUR)" in page
    assert 'name="number"' not in page


def test_the_card_fields_say_what_they_are_to_the_browser() -> None:
    seat = _reserved()
    page = _signed_in(seat.client).get(reverse("billing:pay", args=[seat.payment_id])).content
    text = page.decode()
    for token in ("cc-name", "cc-number", "cc-exp", "cc-csc"):
        assert f'autocomplete="{token}"' in text


def test_descriptions_that_carried_who_and_when_are_split_by_the_migration() -> None:
    from importlib import import_module

    from django.apps import apps

    migration = import_module("billing.migrations.0004_payment_starts_at")
    payee = UserFactory.create(display_name="Erin Expert")
    old = services.payment_open(
        payer=UserFactory.create(),
        payee=payee,
        amount_minor=6000,
        currency="EUR",
        description="Talk with friends with Erin Expert, 2026-12-07 09:00 UTC",
    )
    other = services.payment_open(
        payer=UserFactory.create(),
        payee=payee,
        amount_minor=6000,
        currency="EUR",
        description="A purchase that is not a session",
    )
    migration.split_descriptions(apps, None)
    old.refresh_from_db()
    other.refresh_from_db()
    assert (old.description, old.starts_at) == (
        "Talk with friends",
        datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
    )
    assert (other.description, other.starts_at) == ("A purchase that is not a session", None)


def test_an_earning_due_says_when_and_that_a_payout_account_is_needed() -> None:
    from billing.models import PayoutAccount

    seat = _charged_call()
    expert = seat.room.expert
    [earning] = selectors.earnings_of_payee(expert)
    assert earning.status.startswith("Due ")
    assert earning.status.endswith("connect your payout account to be paid")
    PayoutAccount.objects.create(
        user=expert, provider="local", account_id="lacct_due", payouts_enabled=True
    )
    [earning] = selectors.earnings_of_payee(expert)
    assert earning.status.startswith("Due ") and "payout account" not in earning.status
