"""A close storm: thirty different actions on one live room at once, on PostgreSQL, with real
threads (issue 16, defect A).

Every writer reads its clock where the code reads it, so a presence or media link committed
while a close waits for its locks starts after the moment the close would have read before
taking them. The close must still end every row after it starts, settle each seat once, and
never crash; a crash of one room's close must not stop the sweep for the other rooms.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import time_machine
from django.db import connection
from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from billing.errors import BillingError
from billing.models import CommandKind, PaymentCommand, Settlement
from rooms import services
from rooms.errors import RoomsError
from rooms.models import MediaLink, Presence, Room, RoomEvent, RoomState, Seat
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    seat_pay,
    weekdays_available,
)

START = CALL_START
MID_CALL = START + dt.timedelta(minutes=30)
ROUNDS = 8
CLOSES = {"time_limit", "ended_by_expert", "terminated_by_staff", "sweep"}


@dataclass
class Outcome:
    kind: str
    started: float
    finished: float
    result: str


def _storm(actions: list[tuple[str, Callable[[], object]]]) -> list[Outcome]:
    """Run each action in its own thread (own database connection), released together;
    record when each ran and how it ended."""
    barrier = threading.Barrier(len(actions))
    outcomes: list[Outcome] = []
    lock = threading.Lock()

    def run(kind: str, action: Callable[[], object]) -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            action()
            result = "ok"
        except (RoomsError, BillingError) as error:
            result = f"refused: {error}"
        except Exception as error:  # a crash is what this test is looking for
            result = f"crashed: {error!r}"
        finally:
            finished = time.monotonic()
            connection.close()
        with lock:
            outcomes.append(Outcome(kind, started, finished, result))

    threads = [threading.Thread(target=run, args=action) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return outcomes


def _live_group_room() -> tuple[Room, list[Seat]]:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    group = OfferingFactory.create(expert=expert, capacity=3)
    with time_machine.travel(NOW, tick=False):
        room = services.group_room_publish(expert, group, START)
        seats = [
            seat_pay(services.group_seat_reserve(UserFactory.create(), room.pk)) for _ in range(3)
        ]
    with time_machine.travel(START - dt.timedelta(minutes=5), tick=False):
        assert services.room_open(room.pk)
    with time_machine.travel(START, tick=False):
        for who in [expert, *(seat.client for seat in seats)]:
            services.presence_open(room.pk, who, connection_id=f"first-{who.pk}")
    for seat in seats:
        for reporter in (expert, seat.client):
            MediaLink.objects.create(
                room=room, client=seat.client, reported_by=reporter, started_at=START
            )
    room.refresh_from_db()
    assert room.state == RoomState.LIVE
    return room, seats


def _heartbeat(connection_id: str) -> object:
    return services.presences_heartbeat({connection_id: timezone.now()})


def _actions(
    room: Room, seats: list[Seat], round_no: int
) -> list[tuple[str, Callable[[], object]]]:
    expert = room.expert
    clients: list[User] = [seat.client for seat in seats]
    staff = UserFactory.create(is_staff=True)
    people = [expert, *clients]
    actions: list[tuple[str, Callable[[], object]]] = []
    actions += [("time_limit", partial(services.room_close, room.pk, reason="time_limit"))] * 5
    actions += [("ended_by_expert", partial(services.room_end_by_expert, room.pk, expert))] * 4
    actions += [
        (
            "terminated_by_staff",
            partial(services.room_close, room.pk, reason="terminated_by_staff", actor=staff),
        )
    ] * 3
    actions += [("sweep", services.presences_sweep_stale)] * 2
    actions += [("sweep", services.rooms_advance)]
    for n, who in enumerate(people):
        actions.append(
            (
                "rejoin",
                partial(
                    services.presence_open, room.pk, who, connection_id=f"r{round_no}-{n}-{who.pk}"
                ),
            )
        )
    actions.append(
        (
            "rejoin",
            # Connection ids are unique for all time (a channel name), so one per round.
            partial(services.presence_open, room.pk, clients[0], connection_id=f"again-{round_no}"),
        )
    )
    for who in clients:
        actions.append(
            ("leave", partial(services.presence_close, f"first-{who.pk}", reason="left"))
        )
    # Two processes' heartbeat batches, each stamped when it runs.
    for who in (expert, clients[0]):
        actions.append(("heartbeat", partial(_heartbeat, f"first-{who.pk}")))
    for seat in seats:
        actions.append(
            (
                "media",
                partial(
                    services.media_state_report,
                    room.pk,
                    seat.client,
                    peer_id=expert.pk,
                    state="disconnected",
                ),
            )
        )
    actions.append(
        (
            "media",
            partial(
                services.media_state_report,
                room.pk,
                expert,
                peer_id=clients[1].pk,
                state="disconnected",
            ),
        )
    )
    actions.append(
        (
            "media",
            partial(
                services.media_state_report,
                room.pk,
                clients[2],
                peer_id=expert.pk,
                state="connected",
                candidate_type="host",
            ),
        )
    )
    return actions


@pytest.mark.django_db(transaction=True)
def test_thirty_different_actions_on_one_live_room_never_crash_and_settle_once() -> None:
    crashes: list[str] = []
    for round_no in range(ROUNDS):
        room, seats = _live_group_room()
        actions = _actions(room, seats, round_no)
        assert len(actions) == 30
        # The clock runs (tick): each writer reads it where the code reads it.
        with time_machine.travel(MID_CALL + dt.timedelta(minutes=round_no), tick=True):
            outcomes = _storm(actions)
        assert len(outcomes) == 30
        crashes += [f"{o.kind}: {o.result}" for o in outcomes if o.result.startswith("crashed")]
        assert crashes == [], f"round {round_no}: {len(crashes)} crashed: {crashes}"

        # The sides really overlapped: a close was running while each other kind of action
        # ran (all released at once, each waiting on the room's locks in PostgreSQL).
        closes = [o for o in outcomes if o.kind in CLOSES - {"sweep"}]
        for kind in ("rejoin", "leave", "media"):
            others = [o for o in outcomes if o.kind == kind]
            assert any(
                c.started < o.finished and o.started < c.finished for c in closes for o in others
            ), f"round {round_no}: no {kind} overlapped a close"

        room.refresh_from_db()
        assert room.state == RoomState.CLOSED
        assert RoomEvent.objects.filter(room=room, kind="closed").count() == 1
        for seat in seats:
            assert seat.payment_id is not None
            assert Settlement.objects.filter(payment_id=seat.payment_id).count() == 1
            assert (
                PaymentCommand.objects.filter(
                    payment_id=seat.payment_id, kind__in=(CommandKind.CAPTURE, CommandKind.CANCEL)
                ).count()
                == 1
            )
        # Nothing is left open, and nothing ends before it starts.
        assert not Presence.objects.filter(room=room, closed_at__isnull=True).exists()
        assert not MediaLink.objects.filter(room=room, ended_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_media_link_reported_after_the_close_opens_nothing() -> None:
    room, seats = _live_group_room()
    with time_machine.travel(MID_CALL, tick=False):
        services.room_close(room.pk, reason="ended_by_expert", actor=room.expert)
        links = MediaLink.objects.count()
        with pytest.raises(RoomsError, match="ended"):
            services.media_state_report(
                room.pk, seats[0].client, peer_id=room.expert_id, state="connected",
                candidate_type="host",
            )  # fmt: skip
    assert MediaLink.objects.count() == links
    assert not MediaLink.objects.filter(ended_at__isnull=True).exists()
