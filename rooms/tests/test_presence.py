"""Presence: who is admitted, one connection per participant, resume within the grace, the
stale sweep, and the media links that metering reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
import time_machine

from accounts.models import Block
from accounts.tests.factories import UserFactory
from rooms import services
from rooms.errors import RoomsError
from rooms.models import MediaLink, Offering, Presence, Room, RoomState, Seat
from rooms.services import JoinRefused
from rooms.tests.factories import (
    CALL_START,
    NOW,
    OfferingFactory,
    expert_create,
    seat_booked,
    seat_pay,
    weekdays_available,
)

UTC = dt.UTC
START = CALL_START

pytestmark = pytest.mark.django_db


def _at(seconds: float) -> dt.datetime:
    return START + dt.timedelta(seconds=seconds)


@pytest.fixture
def seat(offering: Offering) -> Seat:
    seat = seat_booked(offering)
    with time_machine.travel(_at(-600), tick=False):
        services.rooms_advance()
    return seat


def _room(seat: Seat) -> Room:
    return Room.objects.get(pk=seat.room_id)


def test_the_expert_and_a_paid_client_are_admitted_and_the_call_goes_live(seat: Seat) -> None:
    room = _room(seat)
    expert = services.presence_open(room.pk, room.expert, connection_id="e1", now=_at(0))
    assert not expert.went_live
    client = services.presence_open(room.pk, seat.client, connection_id="c1", now=_at(5))
    assert client.went_live
    room.refresh_from_db()
    assert (room.state, room.live_at) == (RoomState.LIVE, _at(5))


@pytest.mark.parametrize(
    ("who", "code"),
    [("stranger", "not_participant"), ("unpaid", "not_paid"), ("blocked", "blocked")],
)
def test_someone_the_room_does_not_admit_is_refused_with_a_reason(
    seat: Seat, offering: Offering, who: str, code: str
) -> None:
    room = _room(seat)
    user = seat.client
    if who == "stranger":
        user = UserFactory.create()
    elif who == "unpaid":
        Seat.objects.filter(pk=seat.pk).update(state="canceled")
    else:
        Block.objects.create(blocker=room.expert, blocked=seat.client)
    with pytest.raises(JoinRefused) as refused:
        services.presence_open(room.pk, user, connection_id="x", now=_at(0))
    assert refused.value.code == code
    assert not Presence.objects.exists()


def test_a_room_not_open_yet_or_ended_refuses_everyone(seat: Seat) -> None:
    room = _room(seat)
    Room.objects.filter(pk=room.pk).update(state=RoomState.SCHEDULED)
    with pytest.raises(JoinRefused, match="lobby opens") as early:
        services.presence_open(room.pk, room.expert, connection_id="e", now=_at(-900))
    assert early.value.code == "too_early"
    Room.objects.filter(pk=room.pk).update(state=RoomState.OPEN)
    services.room_close(room.pk, reason="ended_by_expert", now=_at(1))
    with pytest.raises(JoinRefused) as ended:
        services.presence_open(room.pk, room.expert, connection_id="e2", now=_at(2))
    assert ended.value.code == "room_ended"


def test_a_second_connection_replaces_the_first_and_is_a_resume(seat: Seat) -> None:
    room = _room(seat)
    services.presence_open(room.pk, seat.client, connection_id="tab1", now=_at(0))
    second = services.presence_open(room.pk, seat.client, connection_id="tab2", now=_at(30))
    assert (second.replaced_connection_id, second.resumed) == ("tab1", True)
    beaten = services.presences_heartbeat({"tab1": _at(31), "tab2": _at(31)})
    assert (set(beaten.alive), set(beaten.gone)) == ({"tab2"}, {"tab1"})
    first = Presence.objects.get(connection_id="tab1")
    assert (first.closed_at, first.close_reason) == (_at(30), "replaced")


def test_a_reconnect_within_twenty_seconds_resumes_and_later_is_a_new_join(seat: Seat) -> None:
    room = _room(seat)
    services.presence_open(room.pk, seat.client, connection_id="a", now=_at(0))
    services.presence_close("a", reason="dropped", now=_at(10))
    assert services.presence_open(room.pk, seat.client, connection_id="b", now=_at(30)).resumed
    services.presence_close("b", reason="dropped", now=_at(40))
    assert not services.presence_open(room.pk, seat.client, connection_id="c", now=_at(61)).resumed


def test_a_silent_connection_is_swept_at_its_last_heartbeat(seat: Seat) -> None:
    room = _room(seat)
    services.presence_open(room.pk, seat.client, connection_id="a", now=_at(0))
    assert services.presences_heartbeat({"a": _at(5)}).alive == {"a"}
    # Silent for 15 s, plus the 2 s a beat may wait in its process's batch.
    assert services.presences_sweep_stale(now=_at(21.9)) == 0
    assert services.presences_sweep_stale(now=_at(22.1)) == 1
    swept = Presence.objects.get(connection_id="a")
    assert (swept.closed_at, swept.close_reason) == (_at(5), "stale")
    assert services.presences_sweep_stale(now=_at(60)) == 0


def test_media_reports_open_and_close_one_link_per_reporter(seat: Seat) -> None:
    room = _room(seat)
    expert = room.expert
    for reporter, peer in ((seat.client, expert.pk), (expert, seat.client_id)):
        services.media_state_report(
            room.pk, reporter, peer_id=peer, state="connected", candidate_type="host", now=_at(0)
        )
        # A repeated "connected" keeps the open link.
        services.media_state_report(room.pk, reporter, peer_id=peer, state="connected", now=_at(3))
    services.media_state_report(
        room.pk, seat.client, peer_id=expert.pk, state="disconnected", now=_at(9)
    )
    links = {
        (link.reported_by_id, link.started_at, link.ended_at) for link in MediaLink.objects.all()
    }
    assert links == {(seat.client_id, _at(0), _at(9)), (expert.pk, _at(0), None)}


@pytest.mark.parametrize("who", ["client", "expert"])
def test_leaving_ends_the_media_links_both_sides_reported_and_a_drop_does_not(
    seat: Seat, who: str
) -> None:
    # The page closes its peer connection to someone who left without reporting: the other
    # side's link stayed open, and the client's rejoin was billed from the rejoin, before
    # media came back (the fault harness measured it; with no media after the rejoin, the
    # whole rest of the call).
    room = _room(seat)
    expert, client = room.expert, seat.client
    services.presence_open(room.pk, expert, connection_id="e", now=_at(0))
    services.presence_open(room.pk, client, connection_id="c", now=_at(0))
    for reporter, peer in ((client, expert.pk), (expert, client.pk)):
        services.media_state_report(room.pk, reporter, peer_id=peer, state="connected", now=_at(1))
    # A dropped socket: media goes on peer to peer, the links stay.
    services.presence_close("c", reason="dropped", now=_at(5))
    assert MediaLink.objects.filter(ended_at__isnull=True).count() == 2
    services.presence_open(room.pk, client, connection_id="c2", now=_at(6))
    services.presence_close("c2" if who == "client" else "e", reason="left", now=_at(10))
    assert {(link.reported_by_id, link.ended_at) for link in MediaLink.objects.all()} == {
        (client.pk, _at(10)),
        (expert.pk, _at(10)),
    }


def test_a_client_leaving_a_group_room_ends_only_their_own_links() -> None:
    expert = expert_create(time_zone="UTC")
    weekdays_available(expert)
    group = OfferingFactory.create(expert=expert, capacity=3)
    with time_machine.travel(NOW, tick=False):
        published = services.group_room_publish(expert, group, START)
        first, second = (
            seat_pay(services.group_seat_reserve(UserFactory.create(), published.pk))
            for _ in range(2)
        )
    with time_machine.travel(_at(-600), tick=False):
        services.rooms_advance()
    room = _room(first)
    expert = room.expert
    for seat in (first, second):
        services.presence_open(room.pk, seat.client, connection_id=f"c{seat.pk}", now=_at(0))
        services.media_state_report(
            room.pk, expert, peer_id=seat.client_id, state="connected", now=_at(1)
        )
    services.presence_close(f"c{first.pk}", reason="left", now=_at(10))
    assert {(link.client_id, link.ended_at) for link in MediaLink.objects.all()} == {
        (first.client_id, _at(10)),
        (second.client_id, None),
    }


def test_a_late_disconnected_report_ends_the_link_when_media_last_arrived(seat: Seat) -> None:
    # The report sat in a dead socket's buffer for 8 s; `since` says when media stopped.
    room = _room(seat)
    client, expert = seat.client, room.expert
    services.media_state_report(room.pk, client, peer_id=expert.pk, state="connected", now=_at(0))
    services.media_state_report(
        room.pk, client, peer_id=expert.pk, state="disconnected", since=_at(12), now=_at(20)
    )
    assert MediaLink.objects.get().ended_at == _at(12)


@pytest.mark.parametrize(
    ("since", "now", "ended"),
    [
        # Never before the link began, never more than a minute back, never in the future.
        (-30, 40, 10),
        (200 - 61, 200, 200 - 60),
        (300, 200, 200),
    ],
)
def test_the_since_of_a_disconnected_report_is_bounded(
    seat: Seat, since: int, now: int, ended: int
) -> None:
    room = _room(seat)
    client, expert = seat.client, room.expert
    services.media_state_report(room.pk, client, peer_id=expert.pk, state="connected", now=_at(10))
    services.media_state_report(
        room.pk, client, peer_id=expert.pk, state="disconnected", since=_at(since), now=_at(now)
    )
    assert MediaLink.objects.get().ended_at == _at(ended)


def test_one_sides_early_end_does_not_shorten_the_others_link(seat: Seat) -> None:
    # Either side's report counts: a client dating its own end back cannot unbill what the
    # expert saw.
    room = _room(seat)
    client, expert = seat.client, room.expert
    services.media_state_report(room.pk, client, peer_id=expert.pk, state="connected", now=_at(0))
    services.media_state_report(room.pk, expert, peer_id=client.pk, state="connected", now=_at(0))
    services.media_state_report(
        room.pk, client, peer_id=expert.pk, state="disconnected", since=_at(1), now=_at(30)
    )
    links = {(link.reported_by_id, link.ended_at) for link in MediaLink.objects.all()}
    assert links == {(client.pk, _at(1)), (expert.pk, None)}


def test_a_connected_report_sent_again_later_starts_the_link_when_media_came_up(
    seat: Seat,
) -> None:
    # Refused while PostgreSQL restarted, sent again 3 s later: stamped on arrival, the call
    # would go unbilled for those 3 s (the fault harness found whole calls unbilled this way).
    room = _room(seat)
    client, expert = seat.client, room.expert
    services.media_state_report(
        room.pk, client, peer_id=expert.pk, state="connected", since=_at(5), now=_at(8)
    )
    assert MediaLink.objects.get().started_at == _at(5)


@pytest.mark.parametrize(
    ("since", "now", "started"),
    [
        # Never more than a minute back, never in the future.
        (200 - 61, 200, 200 - 60),
        (300, 200, 200),
    ],
)
def test_the_since_of_a_connected_report_is_bounded(
    seat: Seat, since: int, now: int, started: int
) -> None:
    room = _room(seat)
    client, expert = seat.client, room.expert
    services.media_state_report(
        room.pk, client, peer_id=expert.pk, state="connected", since=_at(since), now=_at(now)
    )
    assert MediaLink.objects.get().started_at == _at(started)


def _client_reports(seat: Seat) -> Callable[[str, float, float], None]:
    """The seat's client reporting its media with the expert: state, since and arrival, in
    seconds from the start."""
    room = _room(seat)

    def report(state: str, since: float, now: float) -> None:
        services.media_state_report(
            room.pk, seat.client, peer_id=room.expert_id, state=state, since=_at(since),
            now=_at(now),
        )  # fmt: skip

    return report


def test_an_outages_reports_sent_again_on_a_new_socket_keep_the_link_that_followed(
    seat: Seat,
) -> None:
    # The fault harness: an outage's `disconnected` (since 10) and the `connected` after it
    # (since 15) both went into a socket whose Daphne was killed before the next heartbeat's
    # ack, and both went again on the next socket. The repeated `disconnected` ends the link
    # that began at 15 there (it is dated before it); the repeated `connected` must reopen it,
    # or the media is lost for the rest of the call.
    report = _client_reports(seat)

    report("connected", 0, 0)
    report("disconnected", 10, 12)
    report("connected", 15, 15)
    report("disconnected", 10, 18)
    report("connected", 15, 18)
    open_links = MediaLink.objects.filter(ended_at__isnull=True)
    assert [link.started_at for link in open_links] == [_at(15)]


def test_a_connected_report_sent_again_behind_a_later_disconnected_reopens_nothing(
    seat: Seat,
) -> None:
    # The page's outbox sends unconfirmed reports again in order: the `connected` the server
    # already had, then the `disconnected` that ended it. The first must not open a new link
    # that the second (already applied) would never end.
    room = _room(seat)
    client, expert = seat.client, room.expert
    report = _client_reports(seat)

    report("connected", 0, 0)
    report("disconnected", 10, 12)
    report("connected", 0, 14)
    report("disconnected", 10, 14)
    assert [(link.started_at, link.ended_at) for link in MediaLink.objects.all()] == [
        (_at(0), _at(10))
    ]
    # Media that really came back after the end is a new link, even when the page's clock
    # (its `since`) is a little behind the server's, which stamped the end on arrival.
    services.media_state_report(
        room.pk, client, peer_id=expert.pk, state="disconnected", now=_at(20)
    )
    report("connected", 19.9, 20.1)
    links = MediaLink.objects.order_by("started_at")
    assert [(link.started_at, link.ended_at) for link in links] == [
        (_at(0), _at(10)),
        (_at(19.9), None),
    ]


@pytest.mark.parametrize(
    ("state", "candidate", "peer", "message"),
    [
        ("up", "host", "expert", "Media state must be one of"),
        ("connected", "carrier-pigeon", "expert", "Unknown ICE candidate type"),
        ("connected", "host", "self", "between the expert and one client"),
        ("connected", "host", "stranger", "between the expert and one client"),
    ],
)
def test_a_wrong_media_report_is_refused_and_writes_nothing(
    seat: Seat, state: str, candidate: str, peer: str, message: str
) -> None:
    room = _room(seat)
    peer_id = {
        "expert": room.expert_id,
        "self": seat.client_id,
        "stranger": UserFactory.create().pk,
    }[peer]
    with pytest.raises(RoomsError, match=message):
        services.media_state_report(
            room.pk, seat.client, peer_id=peer_id, state=state, candidate_type=candidate
        )
    assert not MediaLink.objects.exists()
