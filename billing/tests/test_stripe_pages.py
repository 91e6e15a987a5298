"""A booking paid at Stripe (localstripe): the pay page hands Stripe.js what it confirms, and
the browser's return is verified with Stripe before the seat is confirmed — whether or not the
webhook came first."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import time

import pytest
import stripe
import time_machine
from django.test import Client
from django.urls import reverse
from pytest_django import DjangoCaptureOnCommitCallbacks

from accounts.tests.factories import UserFactory
from billing.models import Payment, PaymentState
from billing.tests.localstripe import WEBHOOK_SECRET, browser_confirms
from rooms import services as rooms
from rooms.models import RoomEvent, Seat, SeatState
from rooms.tests.factories import NOW, OfferingFactory, expert_create, weekdays_available

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stripe_settings")]

SLOT = dt.datetime(2026, 12, 3, 10, 0, tzinfo=dt.UTC)


@pytest.fixture
def seat() -> Seat:
    with time_machine.travel(NOW, tick=False):
        expert = expert_create(time_zone="UTC")
        weekdays_available(expert)
        offering = OfferingFactory.create(expert=expert)
        return rooms.booking_reserve(UserFactory.create(), offering, SLOT)


def _client(seat: Seat) -> Client:
    client = Client()
    client.force_login(seat.client)
    return client


def _pay_page(client: Client, seat: Seat) -> tuple[Payment, str]:
    assert seat.payment_id is not None
    next_url = reverse("rooms:seat_confirm", args=[seat.pk])
    with time_machine.travel(NOW + dt.timedelta(minutes=1), tick=False):
        page = client.get(reverse("billing:pay", args=[seat.payment_id]), {"next": next_url})
    assert page.status_code == 200
    payment = Payment.objects.get(pk=seat.payment_id)
    text = page.content.decode()
    assert f'data-client-secret="{payment.intent_id}_secret_' in text
    assert 'data-publishable-key="pk_test_parley"' in text
    assert "https://js.stripe.com/v3/" in text
    return payment, next_url


def _return(client: Client, payment: Payment, next_url: str) -> str:
    with time_machine.travel(NOW + dt.timedelta(minutes=2), tick=False):
        response = client.get(
            reverse("billing:pay_return", args=[payment.pk]),
            {"next": next_url, "payment_intent": payment.intent_id, "redirect_status": "x"},
        )
    assert response.status_code == 302
    return str(response["Location"])


def test_the_verified_return_from_stripe_confirms_the_seat(
    seat: Seat, stripe_api: stripe.StripeClient
) -> None:
    client = _client(seat)
    payment, next_url = _pay_page(client, seat)
    browser_confirms(stripe_api, payment.intent_id)
    assert _return(client, payment, next_url) == next_url
    seat.refresh_from_db()
    payment.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    assert (payment.state, payment.authorized_minor) == (PaymentState.AUTHORIZED, 12000)


def test_a_return_without_a_payment_at_stripe_confirms_nothing(seat: Seat) -> None:
    """The query string is not trusted: only what Stripe holds counts."""
    client = _client(seat)
    payment, next_url = _pay_page(client, seat)
    _return(client, payment, next_url)
    seat.refresh_from_db()
    assert seat.state == SeatState.RESERVED
    assert Payment.objects.get(pk=payment.pk).state == PaymentState.PENDING


def test_the_webhook_first_then_the_return_confirms_once(
    seat: Seat,
    stripe_api: stripe.StripeClient,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    client = _client(seat)
    payment, next_url = _pay_page(client, seat)
    browser_confirms(stripe_api, payment.intent_id)
    intent = stripe_api.v1.payment_intents.retrieve(payment.intent_id).to_dict()
    body = json.dumps(
        {
            "id": "evt_authorized_1",
            "object": "event",
            "type": "payment_intent.amount_capturable_updated",
            "created": int(time.time()),
            "data": {"object": intent},
        }
    ).encode()
    with (
        time_machine.travel(NOW + dt.timedelta(minutes=2), tick=False),
        django_capture_on_commit_callbacks(execute=True),
    ):
        stamp = int(time.time())
        signed = f"{stamp}.".encode() + body
        signature = hmac.new(WEBHOOK_SECRET.encode(), signed, hashlib.sha256)
        response = Client().post(
            reverse("billing:stripe_webhook"),
            body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=f"t={stamp},v1={signature.hexdigest()}",
        )
    assert response.status_code == 200, response.content
    seat.refresh_from_db()
    assert seat.state == SeatState.CONFIRMED
    assert _return(client, payment, next_url) == next_url
    assert RoomEvent.objects.filter(kind="seat_confirmed").count() == 1


def test_a_card_declined_in_the_browser_sends_the_client_back_to_pay(
    seat: Seat, stripe_api: stripe.StripeClient
) -> None:
    client = _client(seat)
    payment, next_url = _pay_page(client, seat)
    with pytest.raises(stripe.CardError):
        browser_confirms(stripe_api, payment.intent_id, number="4000000000000341")
    location = _return(client, payment, next_url)
    assert location.startswith(reverse("billing:pay", args=[payment.pk]))
    payment.refresh_from_db()
    assert payment.state == PaymentState.PENDING
    assert payment.last_error
    seat.refresh_from_db()
    assert seat.state == SeatState.RESERVED
