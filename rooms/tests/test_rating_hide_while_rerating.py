"""Ratings: a staff member hiding a rating while its client gives it again."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection, connections

from accounts.tests.factories import StaffFactory, UserFactory
from rooms.errors import RoomsError
from rooms.models import Presence, Seat, SeatState
from rooms.services import feedback
from rooms.tests.factories import expert_create
from rooms.tests.races import sessions_waiting_on_a_lock
from rooms.tests.ratings_seed import rating_add

pytestmark = pytest.mark.django_db(transaction=True)


def test_hiding_a_rating_while_its_client_rates_again_is_no_database_error() -> None:
    """rating_give locks the room and then the rating; rating_hide locks the rating and the
    room in one statement (select_related + select_for_update), rating first. A client who
    changes their rating at the moment staff hide it must get one of the two orders cleanly,
    never a deadlock error (a 500 page for one of them)."""
    expert = expert_create(time_zone="UTC")
    client = UserFactory.create()
    staff = StaffFactory.create()
    rating = rating_add(expert, 1, "rude words", client=client)
    room = rating.room
    Seat.objects.create(
        room=room,
        client=client,
        state=SeatState.CONFIRMED,
        reserved_until=room.starts_at,
        confirmed_at=room.starts_at - timedelta(days=1),
    )
    Presence.objects.create(
        room=room,
        user=client,
        connection_id="c-attack",
        opened_at=room.starts_at,
        last_heartbeat_at=room.starts_at + timedelta(minutes=5),
        closed_at=room.starts_at + timedelta(minutes=5),
    )

    give_holds_room = threading.Event()
    errors: dict[str, BaseException] = {}
    original_filter = Presence.objects.filter

    def filter_then_pause(*args: Any, **kwargs: Any) -> Any:
        # rating_give has locked the room here and has not asked for the rating yet: let the
        # hide start now, as a request arriving at this moment would.
        if threading.current_thread().name == "give":
            give_holds_room.set()
            for _ in range(500):
                if sessions_waiting_on_a_lock() >= 1:
                    break
                time.sleep(0.01)
        return original_filter(*args, **kwargs)

    def run(name: str, action: Any) -> threading.Thread:
        def body() -> None:
            try:
                action()
            except RoomsError:
                pass
            except BaseException as error:  # noqa: BLE001 - the test reports any other
                errors[name] = error
            finally:
                connections.close_all()

        thread = threading.Thread(target=body, name=name)
        thread.start()
        return thread

    with mock.patch.object(Presence.objects, "filter", filter_then_pause):
        give = run(
            "give",
            lambda: feedback.rating_give(room.pk, client, stars=2, comment="kinder words"),
        )
        assert give_holds_room.wait(10)
        hide = run("hide", lambda: feedback.rating_hide(rating.pk, staff, reason="abusive"))
        give.join(30)
        hide.join(30)
    connection.close()

    assert errors == {}, {name: repr(error) for name, error in errors.items()}
    rating.refresh_from_db()
    assert rating.hidden
    assert rating.comment == "kinder words"
