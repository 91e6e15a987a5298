"""Audit logs cannot be rewritten, and an expert no-show files a report staff see on the
expert's page."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import time_machine
from django.contrib import admin
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.models import ExpertEvent, ExpertProfile, User
from accounts.tests.factories import (
    ExpertProfileFactory,
    StaffFactory,
    UserFactory,
    totp_enable,
)
from accounts.tests.helpers import login_with_mfa
from billing.models import Payment, PaymentEvent
from moderation import services
from moderation.models import Report, ReportState, StaffAction, StaffActionKind
from rooms import services as rooms
from rooms.models import Room, RoomEvent
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    seat_booked,
    seat_pay,
    weekdays_available,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff() -> User:
    return StaffFactory.create()


def _one_of_each_log(staff: User) -> dict[type[Any], Any]:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    action = StaffAction.objects.create(
        actor=staff, kind=StaffActionKind.ROOM_END, reason="x", room=room
    )
    profile = ExpertProfileFactory.create()
    return {
        RoomEvent: room.events.first(),
        PaymentEvent: PaymentEvent.objects.filter(payment__seat=seat).first(),
        StaffAction: action,
        ExpertEvent: ExpertEvent.objects.create(profile=profile, kind="applied", actor=None),
    }


def test_audit_rows_refuse_every_update_and_delete_through_the_orm(staff: User) -> None:
    for model, row in _one_of_each_log(staff).items():
        assert row is not None, model
        with pytest.raises(TypeError, match="append-only"):
            row.save()
        with pytest.raises(TypeError, match="append-only"):
            row.delete()
        with pytest.raises(TypeError, match="append-only"):
            model.objects.filter(pk=row.pk).update(created_at=dt.datetime.now(dt.UTC))
        with pytest.raises(TypeError, match="append-only"):
            model.objects.filter(pk=row.pk).delete()
        assert model.objects.filter(pk=row.pk).exists()


def _fields(row: Any) -> dict[str, Any]:
    return {field.attname: getattr(row, field.attname) for field in type(row)._meta.concrete_fields}


def test_audit_rows_refuse_the_orms_less_obvious_ways_to_rewrite_them(staff: User) -> None:
    for model, row in _one_of_each_log(staff).items():
        kept = _fields(model.objects.get(pk=row.pk))
        # A new instance given an existing pk would UPDATE that row; it is an INSERT instead.
        forged = model(**{**kept, "reason" if hasattr(row, "reason") else "kind": "rewritten"})
        with pytest.raises(IntegrityError):
            with transaction.atomic():
                forged.save()
        for options in ({"update_fields": ["created_at"]}, {"force_update": True}):
            with pytest.raises(TypeError, match="append-only"):
                row.save(**options)
        with pytest.raises(TypeError, match="append-only"):
            model.objects.bulk_create(
                [forged], update_conflicts=True, unique_fields=["id"], update_fields=["created_at"]
            )
        with pytest.raises(TypeError, match="append-only"):
            model._base_manager.filter(pk=row.pk).update(created_at=dt.datetime.now(dt.UTC))
        with pytest.raises(TypeError, match="append-only"):
            model._base_manager.filter(pk=row.pk).delete()
        assert _fields(model.objects.get(pk=row.pk)) == kept


def test_deleting_what_an_audit_row_belongs_to_is_refused(staff: User) -> None:
    logs = _one_of_each_log(staff)
    room_event, expert_event = logs[RoomEvent], logs[ExpertEvent]
    room = Room.objects.get(pk=room_event.room_id)
    profile = ExpertProfile.objects.get(pk=expert_event.profile_id)
    ExpertEvent.objects.create(profile=profile, kind="approved", actor=staff)
    RoomEvent.objects.create(room=room, kind="reported", actor=staff)
    parents = [room, profile, Payment.objects.get(pk=logs[PaymentEvent].payment_id), staff]
    for parent in parents:
        with pytest.raises(ProtectedError):
            with transaction.atomic():
                parent.delete()
    for model, row in logs.items():
        assert model.objects.filter(pk=row.pk).exists()
    assert RoomEvent.objects.filter(actor=staff).exists()


def test_admin_offers_no_way_to_add_change_or_delete_audit_rows(staff: User) -> None:
    request = RequestFactory().get("/admin/")
    request.user = staff  # a superuser: any refusal is the admin class's own
    logs = _one_of_each_log(staff)
    for model in (RoomEvent, PaymentEvent, StaffAction, ExpertEvent):
        model_admin = admin.site._registry.get(model)
        if model_admin is None:
            continue  # shown only inside their parent's page (inlines below)
        assert not model_admin.has_add_permission(request)
        assert not model_admin.has_change_permission(request, logs[model])
        assert not model_admin.has_delete_permission(request, logs[model])
    for parent in (ExpertProfile, Room, Payment):
        for inline in admin.site._registry[parent].get_inline_instances(request):
            assert not inline.has_add_permission(request, None)
            assert not inline.has_change_permission(request, None)
            assert not inline.has_delete_permission(request, None)


def _rooms_nobody_joined(count: int = 1) -> list[Room]:
    """`count` sessions of one expert on consecutive days, none of them joined by anyone."""
    offering = OfferingFactory.create(expert=expert_create(time_zone="UTC"))
    weekdays_available(offering.expert)
    closed = []
    for day in range(count):
        start = CALL_START + dt.timedelta(days=day)
        with time_machine.travel(NOW, tick=False):
            seat = seat_pay(rooms.booking_reserve(UserFactory.create(), offering, start))
        with time_machine.travel(start + dt.timedelta(minutes=11), tick=False):
            rooms.rooms_advance()
            rooms.rooms_advance()  # a second sweep files nothing new
        closed.append(Room.objects.get(pk=seat.room_id))
    return closed


def _room_nobody_joined() -> Room:
    return _rooms_nobody_joined()[0]


def test_an_expert_no_show_files_one_automatic_report_about_the_expert() -> None:
    room = _room_nobody_joined()
    assert room.close_reason == "expert_no_show"
    report = Report.objects.get()
    assert (report.automatic, report.reporter, report.about_id, report.category) == (
        True,
        None,
        room.expert_id,
        "fraud",
    )
    assert report.state == ReportState.OPEN
    assert RoomEvent.objects.filter(room=room, kind="reported", actor=None).exists()


def test_a_client_no_show_files_no_report() -> None:
    seat = seat_booked()
    room = Room.objects.get(pk=seat.room_id)
    with time_machine.travel(CALL_START, tick=False):
        rooms.rooms_advance()
        rooms.presence_open(room.pk, room.expert, connection_id="expert")
    with time_machine.travel(CALL_START + dt.timedelta(minutes=11), tick=False):
        rooms.rooms_advance()
    assert Room.objects.get(pk=room.pk).close_reason == "client_no_show"
    assert not Report.objects.exists()


def test_repeated_no_shows_stand_out_on_the_experts_admin_page(staff: User) -> None:
    first, second = _rooms_nobody_joined(2)
    profile = ExpertProfile.objects.get(user=first.expert)
    browser = Client()
    login_with_mfa(browser, staff, totp_enable(staff))
    text = browser.get(
        reverse("admin:accounts_expertprofile_change", args=[profile.pk])
    ).content.decode()
    assert "Repeated: 2 session(s) not joined" in text
    for room in (first, second):
        assert reverse("admin:rooms_room_story", args=[room.pk]) in text
    listing = browser.get(reverse("admin:accounts_expertprofile_changelist")).content.decode()
    assert "2 — repeated" in listing


def test_staff_resolve_a_report_once(staff: User) -> None:
    room = _room_nobody_joined()
    report = Report.objects.get(room=room)
    services.report_resolve(report.pk, actor=staff, resolution="Expert warned.")
    with pytest.raises(services.ModerationError, match="already resolved"):
        services.report_resolve(report.pk, actor=staff, resolution="Again.")
    assert StaffAction.objects.filter(kind=StaffActionKind.REPORT_RESOLVE).count() == 1
