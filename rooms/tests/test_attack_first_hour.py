"""Attacks on the first-hour changes: each test pins a behaviour the issue promises."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
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


def test_make_run_again_after_a_short_try_out_call_opens_a_new_one_now() -> None:
    """The try-out is for trying a call: the newcomer calls for two minutes, the expert ends
    it, and `make run` again (to show a colleague) must again give a session open now, as it
    prints ("lobby open"), not one that starts when the ended one's booked time is over."""
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
