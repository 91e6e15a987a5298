"""The try-out `make run` books: open now after a short call, and printed as it really is."""

from __future__ import annotations

import datetime as dt
import io
from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from rooms.management.commands.seed_demo import TRY_OUT_TITLE
from rooms.models import Room, RoomState
from rooms.services import room_state

pytestmark = pytest.mark.django_db(transaction=True)


def _seed() -> str:
    out = io.StringIO()
    call_command("seed_demo", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def _try_out() -> Room:
    return (
        Room.objects.filter(offering__title=TRY_OUT_TITLE)
        .exclude(state__in=(RoomState.CLOSED, RoomState.CANCELED))
        .get()
    )


@time_machine.travel(dt.datetime(2026, 12, 7, 14, 3, 30, tzinfo=dt.UTC))
def test_make_run_again_after_a_short_try_out_call_opens_a_new_one_now() -> None:
    """The try-out is for trying a call: the newcomer calls for two minutes, the expert ends
    it, and `make run` again (to show a colleague) must again give a session open now, as it
    prints ("lobby open"), not one that starts when the ended one's booked time is over.
    (At an ordinary hour: near the expert's midnight the try-out may start at midnight.)"""
    _seed()
    first = _try_out()
    assert first.state == RoomState.OPEN
    room_state.room_mark_live(first.pk, at=timezone.now())
    room_state.room_end_by_expert(first.pk, first.expert)

    printed = _seed()
    second = _try_out()
    assert "lobby open" in printed
    assert second.state == RoomState.OPEN, (second.state, second.starts_at, first.ends_at)
    assert second.starts_at <= timezone.now() + timedelta(minutes=2)


def test_make_run_just_before_the_experts_midnight_prints_lobby_open_only_when_it_is() -> None:
    """At 23:44:30 in Berlin (the demo expert's zone) the try-out cannot fit before local
    midnight, so it is booked at 00:00, fifteen and a half minutes away: its lobby is not
    open yet. The command must not print "lobby open" for it (the newcomer opens the links
    and finds a lobby that says "too early")."""
    with time_machine.travel(dt.datetime(2026, 12, 7, 22, 44, 30, tzinfo=dt.UTC), tick=True):
        printed = _seed()
        room = _try_out()
    assert room.state == RoomState.OPEN or "lobby open" not in printed, (
        room.state,
        room.starts_at,
    )
