"""The pay page with the local provider, the webhook endpoint's refusals, the expert's payout
page, and the staff refund in admin."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.test import Client
from django.urls import reverse

from accounts.models import User
from accounts.tests.factories import StaffFactory, UserFactory, totp_enable
from accounts.tests.helpers import login_with_mfa
from billing import services
from billing.gateways.local import TEST_CARD
from billing.models import (
    CommandState,
    Payment,
    PaymentCommand,
    PaymentState,
    PayoutAccount,
    WebhookEvent,
)
from billing.tests.helpers import commands_run_pending
from rooms.tests.factories import expert_create

pytestmark = pytest.mark.django_db

CARD = {"number": "4242 4242 4242 4242", "expiry": "12/39", "cvc": "123"}


def _open(payer: User | None = None) -> Payment:
    return services.payment_open(
        payer=payer or UserFactory.create(),
        payee=UserFactory.create(),
        amount_minor=12000,
        currency="EUR",
        description="Architecture review with Erin",
    )


def _signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_the_pay_page_shows_what_is_held_and_the_test_cards() -> None:
    payment = _open()
    page = _signed_in(payment.payer).get(reverse("billing:pay", args=[payment.pk])).content
    text = page.decode()
    assert "Architecture review with Erin" in text
    assert "120.00 EUR" in text
    assert "4242 4242 4242 4242" in text
    assert "4000000000000002" in text


def test_paying_returns_to_the_page_the_payer_came_from() -> None:
    payment = _open()
    response = _signed_in(payment.payer).post(
        reverse("billing:pay", args=[payment.pk]), {**CARD, "next": "/me/sessions/"}
    )
    assert response.status_code == 302
    assert response["Location"] == "/me/sessions/"
    payment.refresh_from_db()
    assert payment.state == PaymentState.AUTHORIZED


def test_a_forged_return_address_is_ignored() -> None:
    payment = _open()
    response = _signed_in(payment.payer).post(
        reverse("billing:pay", args=[payment.pk]), {**CARD, "next": "https://evil.example/"}
    )
    assert response["Location"] == reverse("home")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"number": "4242 4242 4242 4241"}, "check digit is wrong"),
        ({"number": "abc"}, "12 to 19 digits"),
        ({"expiry": "13/30"}, "01 to 12"),
        ({"expiry": "01/20"}, "This card has expired"),
        ({"expiry": "soon"}, "MM/YY"),
        ({"cvc": "12"}, "3 or 4 digits"),
        ({"number": "4000 0000 0000 0002"}, "Your card was declined. Try another card."),
    ],
)
def test_a_bad_or_declined_card_says_what_is_wrong_and_nothing_is_held(
    fields: dict[str, str], message: str
) -> None:
    payment = _open()
    response = _signed_in(payment.payer).post(
        reverse("billing:pay", args=[payment.pk]), {**CARD, **fields}
    )
    assert response.status_code == 400
    assert message in response.content.decode()
    payment.refresh_from_db()
    assert payment.state == PaymentState.PENDING


def test_someone_elses_payment_cannot_be_seen_or_paid() -> None:
    payment = _open()
    other = _signed_in(UserFactory.create())
    assert other.get(reverse("billing:pay", args=[payment.pk])).status_code == 403
    assert other.post(reverse("billing:pay", args=[payment.pk]), CARD).status_code == 403
    payment.refresh_from_db()
    assert payment.state == PaymentState.PENDING


def test_a_paid_payment_shows_its_state_instead_of_the_form() -> None:
    payment = _open()
    services.payment_local_card(payment.pk, card_number=TEST_CARD)
    client = _signed_in(payment.payer)
    text = client.get(reverse("billing:pay", args=[payment.pk])).content.decode()
    assert "Hold placed" in text
    assert 'name="number"' not in text


def test_the_stripe_webhook_refuses_an_unsigned_body_and_stores_nothing() -> None:
    response = Client().post(
        reverse("billing:stripe_webhook"),
        b'{"id": "evt_1", "type": "payment_intent.succeeded"}',
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE="t=1,v1=00",
    )
    assert response.status_code == 400
    assert response.content.decode().startswith("Webhook refused:")
    assert not WebhookEvent.objects.exists()


def test_a_webhook_delivered_while_the_database_restarts_is_answered_503_for_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def restarting(provider: str, payload: bytes, signature: str) -> None:
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(services, "webhook_receive", restarting)
    client = Client(raise_request_exception=False)
    response = client.post(
        reverse("billing:stripe_webhook"),
        b'{"id": "evt_1", "type": "payment_intent.succeeded"}',
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE="t=1,v1=00",
    )
    # Not 2xx, so the provider delivers it again later; not a 500 either.
    assert (response.status_code, response["Retry-After"]) == (503, "5")
    monkeypatch.undo()
    assert not WebhookEvent.objects.exists()


def test_the_payout_page_is_for_approved_experts_only() -> None:
    assert _signed_in(UserFactory.create()).get(reverse("billing:payouts")).status_code == 403


def test_an_expert_connects_a_payout_account_with_the_local_provider() -> None:
    expert = expert_create()
    client = _signed_in(expert)
    assert "Connect payout account" in client.get(reverse("billing:payouts")).content.decode()
    response = client.post(reverse("billing:payouts"))
    assert response.status_code == 302
    assert response["Location"].endswith(reverse("billing:payouts") + "?returned=1")
    text = client.get(response["Location"]).content.decode()
    assert "Your payout account is connected" in text
    account = PayoutAccount.objects.get(user=expert)
    assert account.payouts_enabled
    assert account.account_id.startswith("lacct_")


def _captured() -> Payment:
    payment = _open()
    services.payment_local_card(payment.pk, card_number=TEST_CARD)
    services.payment_settle(
        payment, amount_minor=10000, currency="EUR", rule="fixed", inputs={}, explanation="x"
    )
    commands_run_pending()
    payment.refresh_from_db()
    return payment


def _staff_client() -> Client:
    staff = StaffFactory.create()
    client = Client()
    login_with_mfa(client, staff, totp_enable(staff))
    return client


def test_staff_refund_part_of_a_payment_from_admin() -> None:
    payment = _captured()
    client = _staff_client()
    change = client.get(reverse("admin:billing_payment_change", args=[payment.pk]))
    assert "up to 100.00 EUR" in change.content.decode()
    url = reverse("admin:billing_payment_refund", args=[payment.pk])
    response = client.post(url, {"amount": "25.50", "reason": "Video froze for ten minutes"})
    assert response.status_code == 302
    payment.refresh_from_db()
    assert payment.refunded_minor == 2550
    command = PaymentCommand.objects.get(kind="refund")
    assert (command.amount_minor, command.reason) == (2550, "Video froze for ten minutes")
    event = payment.events.get(kind="refund_decided")
    assert event.actor is not None and event.actor.is_staff


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("100.01", "At most 100.00 EUR can be refunded"),
        ("0", "more than zero"),
        ("1.005", "2 decimal"),
    ],
)
def test_a_refund_over_what_is_left_is_refused_in_admin_and_nothing_is_written(
    amount: str, message: str
) -> None:
    payment = _captured()
    client = _staff_client()
    url = reverse("admin:billing_payment_refund", args=[payment.pk])
    response = client.post(url, {"amount": amount, "reason": "Goodwill"})
    assert response.status_code == 400
    assert message in response.content.decode()
    payment.refresh_from_db()
    assert payment.refunded_minor == 0
    assert not PaymentCommand.objects.filter(kind="refund").exists()


def test_a_client_cannot_reach_the_refund_page() -> None:
    payment = _captured()
    response = _signed_in(payment.payer).get(
        reverse("admin:billing_payment_refund", args=[payment.pk])
    )
    assert response.status_code in (302, 403)
    assert PaymentCommand.objects.filter(state=CommandState.SUCCEEDED).count() == 1
