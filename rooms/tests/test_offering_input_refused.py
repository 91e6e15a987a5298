"""Offerings refuse what would fail later (issue 16, security, low): a price of 0 (free sessions
come later; today it is accepted, then booking answers 500) and a title with control characters
(it goes into email subjects, where a line break breaks the message)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from rooms.errors import RoomsError
from rooms.forms import OfferingForm
from rooms.models import Offering
from rooms.services.offerings import offering_save
from rooms.tests.factories import expert_create

pytestmark = pytest.mark.django_db

GOOD: dict[str, Any] = {
    "title": "Architecture review",
    "description": "An hour on your system's design.",
    "length_minutes": 60,
    "pricing": "fixed",
    "price": "120.00",
    "currency": "EUR",
    "capacity": 1,
    "notice_minutes": 120,
    "buffer_before_minutes": 0,
    "buffer_after_minutes": 0,
    "horizon_days": 60,
    "late_cancel_fee_percent": 50,
    "no_show_fee_percent": 100,
    "is_active": "on",
}


def test_the_good_form_is_valid() -> None:
    form = OfferingForm(GOOD)
    assert form.is_valid(), form.errors


@pytest.mark.parametrize(("price", "currency"), [("0", "EUR"), ("0.00", "EUR"), ("0", "JPY")])
def test_a_price_of_zero_is_refused_in_the_form_with_a_reason(price: str, currency: str) -> None:
    form = OfferingForm({**GOOD, "price": price, "currency": currency})
    assert not form.is_valid()
    assert "Free sessions are not offered yet" in str(form.errors.get("price"))


def test_a_price_of_zero_is_refused_by_the_service() -> None:
    expert = expert_create()
    fields = {**GOOD, "price_minor": 0, "is_active": True}
    del fields["price"]
    with pytest.raises(RoomsError, match="Free sessions are not offered yet"):
        offering_save(expert, None, fields)
    assert not Offering.objects.exists()


def test_the_offering_page_refuses_a_price_of_zero_and_saves_nothing() -> None:
    client = Client()
    client.force_login(expert_create())
    response = client.post(reverse("rooms:offering_new"), {**GOOD, "price": "0"})
    assert response.status_code in (200, 400)
    assert b"Free sessions are not offered yet" in response.content
    assert not Offering.objects.exists()


@pytest.mark.parametrize("title", ["Review\r\nBcc: all@example.test", "Tab\there", "Bell\x07"])
def test_control_characters_in_a_title_are_refused(title: str) -> None:
    form = OfferingForm({**GOOD, "title": title})
    assert not form.is_valid()
    assert "control characters" in str(form.errors.get("title"))

    fields = {**GOOD, "title": title, "price_minor": 12000, "is_active": True}
    del fields["price"]
    with pytest.raises(RoomsError, match="control characters"):
        offering_save(expert_create(), None, fields)
    assert not Offering.objects.exists()
