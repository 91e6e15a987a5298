"""Who is in a room, as the server sees it: connections, heartbeats, replacement, resume, and
the media links the participants report.

Presence lives in the database, never only in a process: several Daphne processes serve one
room, and a process that dies leaves rows the sweeper closes at their last heartbeat.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import (
    Count,
    Exists,
    F,
    FilteredRelation,
    OuterRef,
    Q,
    Subquery,
    Value,
)
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import Block, User
from accounts.sql import cursor_prepared
from rooms import broadcast
from rooms.errors import RoomsError
from rooms.models import (
    DROP_REASONS,
    CallStats,
    CloseReason,
    MediaLink,
    Presence,
    Room,
    RoomEvent,
    RoomKind,
    RoomState,
    Seat,
    SeatState,
)
from rooms.protocol import CANDIDATE_TYPES, MEDIA_STATES
from rooms.selectors import participant
from rooms.services.records import room_event_write
from rooms.services.room_state import (
    presence_stale_before,
    room_catch_up,
    room_mark_live,
    room_open,
)

logger = logging.getLogger(__name__)

# Connects per participant per room (SIGNALING_JOINS_MAX) are counted over this window: a
# client reconnecting in a loop makes every peer restart ICE each time. The page's own backoff
# (static/js/room/signaling.js) stays well under the limit.
JOINS_WINDOW_SECONDS = 10


class JoinRefused(RoomsError):
    """A connection the room does not admit; `code` is the reason in one word."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Joined:
    presence: Presence
    # The connection this one replaced (a reload, a second tab): told `replaced` and closed.
    replaced_connection_id: str | None
    # Back within the grace after a drop: peers see `peer_resumed`, not a new join.
    resumed: bool
    went_live: bool


@dataclass(frozen=True)
class _Admission:
    """What admission needs to know about one user and one room, read in one query."""

    seat_state: str | None
    blocked: bool
    removed: bool
    recent_joins: int
    last_closed_at: datetime | None
    # A confirmed seat holder has an open connection.
    holder_in: bool
    # The room's open connections: (presence id, user id, connection id).
    open: tuple[tuple[int, int, str], ...]


def _admission_read(room: Room, user: User, now: datetime) -> _Admission:
    """One round trip for every fact admission decides on (the seat, a block either way, a
    removal, recent joins, the last drop, who is in). Run after the room's lock, as its own
    statement: a statement that waited for the lock would read what was committed before it
    began, and miss the join it waited for."""
    room_ref, mine = OuterRef("pk"), Presence.objects.filter(room=OuterRef("pk"), user=user)
    rows = list(
        Room.objects.filter(pk=room.pk)
        .annotate(
            open_presences=FilteredRelation(
                "presences", condition=Q(presences__closed_at__isnull=True)
            )
        )
        .values_list(
            Subquery(
                Seat.objects.filter(room=room_ref, client=user).order_by("-pk").values("state")[:1]
            ),
            # Either way round (accounts.selectors.users_blocked_between).
            Exists(
                Block.objects.filter(
                    Q(blocker=user, blocked_id=OuterRef("expert_id"))
                    | Q(blocker_id=OuterRef("expert_id"), blocked=user)
                )
            ),
            Exists(
                RoomEvent.objects.filter(
                    room=room_ref, kind="participant_removed", data__user=user.pk
                )
            ),
            Subquery(
                mine.filter(opened_at__gt=now - timedelta(seconds=JOINS_WINDOW_SECONDS))
                .values("room")
                .annotate(n=Count("pk"))
                .values("n")
            ),
            Subquery(
                mine.filter(closed_at__isnull=False).order_by("-closed_at").values("closed_at")[:1]
            ),
            Exists(
                Seat.objects.filter(
                    room=room_ref,
                    state=SeatState.CONFIRMED,
                    # The seat's room (an OuterRef here is relative to the seat's query).
                    client_id__in=Presence.objects.filter(
                        room=OuterRef("room"), closed_at__isnull=True
                    ).values("user_id"),
                )
            ),
            "open_presences__pk",
            "open_presences__user_id",
            "open_presences__connection_id",
        )
    )
    seat_state, blocked, removed, recent_joins, last_closed_at, holder_in = rows[0][:6]
    return _Admission(
        seat_state=seat_state,
        blocked=bool(blocked),
        removed=bool(removed),
        recent_joins=recent_joins or 0,
        last_closed_at=last_closed_at,
        holder_in=bool(holder_in),
        open=tuple((row[6], row[7], row[8]) for row in rows if row[6] is not None),
    )


def room_admission_check(room: Room, user: User, *, now: datetime | None = None) -> None:
    """Raise JoinRefused unless `user` may be in `room` now: its expert or a confirmed seat
    holder, not blocked by the other side, active, the room open or live (by the clock: a
    lobby whose time has come counts as open, a room past its paid end as ended) and not
    full."""
    now = now or timezone.now()
    _admission_refuse(room, user, _admission_read(room, user, now), now)


def _admission_refuse(room: Room, user: User, facts: _Admission, now: datetime) -> None:
    if not user.is_active:
        raise JoinRefused("blocked", "This account is suspended.")
    is_expert = room.expert_id == user.pk
    if not is_expert:
        if facts.seat_state is None:
            raise JoinRefused("not_participant", "This room is for its expert and its clients.")
        if room.state in (RoomState.CLOSED, RoomState.CANCELED):
            # Said before the seat's state: a canceled session cancels its seats too, and
            # "not paid" would send the client to pay for a session that is gone.
            raise JoinRefused("room_ended", f"This session is {room.get_state_display().lower()}.")
        if facts.seat_state != SeatState.CONFIRMED:
            raise JoinRefused("not_paid", "Your seat in this session is not paid.")
        if facts.blocked:
            raise JoinRefused("blocked", "You cannot join this session.")
    lobby_opens_at = room.starts_at - timedelta(minutes=settings.LOBBY_OPENS_MINUTES)
    if room.state == RoomState.SCHEDULED and now < lobby_opens_at:
        raise JoinRefused("too_early", "The lobby opens 10 minutes before the start.")
    if room.state in (RoomState.CLOSED, RoomState.CANCELED):
        raise JoinRefused("room_ended", f"This session is {room.get_state_display().lower()}.")
    if now >= room.ends_at:
        raise JoinRefused("room_ended", "The booked time of this session is over.")
    if facts.removed:
        raise JoinRefused("removed", "You were removed from this session.")
    others = {user_id for _, user_id, _ in facts.open if user_id != user.pk}
    # The expert and one place per seat; only a seat changing hands could overfill it.
    if len(others) >= room.capacity + 1:
        raise JoinRefused("room_full", "Every place in this session is taken.")


def presence_open(
    room_id: int,
    user: User,
    *,
    connection_id: str,
    process: str = "",
    now: datetime | None = None,
) -> Joined:
    """A connection joins: admitted or refused, replacing the user's older connection, and
    starting the live window when the expert and a seat holder are first both in.

    The room follows the clock here, with or without a Celery worker: a lobby whose time has
    come opens, and a room whose close is due (its paid end, a no-show) closes first.

    Round trips (rooms/tests/test_socket_database.py counts them): the catch-up's read, the
    room's lock, one read of everything admission decides on, then the writes."""
    if now is None:
        try:
            room_catch_up(room_id)
        except Room.DoesNotExist:
            raise
        except Exception:
            # The sweep will try again; admission below still follows the clock.
            logger.exception("Catching room %s up with the clock failed.", room_id)
    with transaction.atomic():
        # The room's lock orders joins, closes, removals and media reports of one room.
        room = Room.objects.select_for_update().get(pk=room_id)
        # Read after the room's lock: every presence of this room committed before it
        # started no earlier, so the one this replaces never ends before it began.
        now = now or timezone.now()
        facts = _admission_read(room, user, now)
        _admission_refuse(room, user, facts, now)
        if room.state == RoomState.SCHEDULED:
            # The lobby's time has come but no sweep has opened it yet.
            room_open(room.pk, now=now)
            room.refresh_from_db()
        if facts.recent_joins >= settings.SIGNALING_JOINS_MAX:
            raise JoinRefused(
                "too_many_joins",
                f"Too many connections in a short time; try again in {JOINS_WINDOW_SECONDS} s.",
            )
        old = next(((pk, cid) for pk, uid, cid in facts.open if uid == user.pk), None)
        grace = timedelta(seconds=settings.RESUME_GRACE_SECONDS)
        resumed = old is not None or (
            facts.last_closed_at is not None and now - facts.last_closed_at <= grace
        )
        if old is not None:
            # Conditional instead of locked: a close of that connection (its socket's own
            # disconnect, the sweep) may commit first, and then stands; either way it is over.
            Presence.objects.filter(pk=old[0], closed_at__isnull=True).update(
                closed_at=Greatest(Value(now), F("opened_at")), close_reason="replaced"
            )
        presence = Presence.objects.create(
            room=room,
            user=user,
            connection_id=connection_id,
            process=process,
            opened_at=now,
            last_heartbeat_at=now,
        )
        room_event_write(room, "presence_opened", user, connection=connection_id, resumed=resumed)
        if old is not None:
            broadcast.participant_send(
                room.pk, user.pk, {"type": "presence.replaced", "connection_id": old[1]}
            )
        if resumed:
            broadcast.room_tell(
                room.pk, {"type": "peer_resumed", "peer_id": user.pk}, about=user.pk
            )
        else:
            peer = participant(room, user)
            broadcast.room_tell(room.pk, {"type": "peer_joined", "peer": peer}, about=user.pk)
        inside = {user_id for _, user_id, _ in facts.open} | {user.pk}
        # Admitted, a client holds a confirmed seat.
        holder_in = facts.holder_in or user.pk != room.expert_id
        went_live = (
            room.state == RoomState.OPEN
            and room.expert_id in inside
            and holder_in
            and room_mark_live(room.pk, at=now)
        )
    return Joined(presence, old[1] if old else None, resumed, went_live)


@dataclass(frozen=True)
class Heartbeats:
    """What one batch of heartbeats found, by connection id."""

    # Open, and the room's paid time not over at the beat: the beat is stored.
    alive: frozenset[str]
    # Closed (replaced, swept, left, the room closed), unknown, or past the paid end.
    gone: frozenset[str]
    # Open but held by another transaction (a close, a replace, the sweep) at that instant:
    # not waited for, so a flush never queues behind a close; send the beat again.
    busy: frozenset[str]


def presences_heartbeat(beats: Mapping[str, datetime]) -> Heartbeats:
    """Store one process's heartbeats, each at the time it arrived, in one statement.

    Never backwards (GREATEST): a beat older than what a newer write stored cannot move the
    last heartbeat back, where the sweeper would end the presence early. A beat after its
    room's paid end is not stored: that connection is over."""
    if not beats:
        return Heartbeats(frozenset(), frozenset(), frozenset())
    if connection.vendor != "postgresql":
        return _presences_heartbeat_one_by_one(beats)
    ids = sorted(beats)
    with cursor_prepared() as cursor:
        cursor.execute(_heartbeats_sql(), [ids, [beats[i] for i in ids]])
        found = dict(cursor.fetchall())
    by = {state: frozenset(i for i in ids if found.get(i) == state) for state in ("alive", "busy")}
    return Heartbeats(by["alive"], frozenset(beats) - by["alive"] - by["busy"], by["busy"])


@functools.cache
def _heartbeats_sql() -> str:
    """The batch's statement, written out (it runs for every socket of a process, and the ORM
    cannot say SKIP LOCKED on an UPDATE).

    - The rows are locked first, SKIP LOCKED: a row a close, a replace or the sweep holds is
      left for the next flush instead of waited for. Waiting would let two multi-row writers
      (this batch and a room's close) lock the same room's rows in opposite orders and
      deadlock; and a skipped beat is sent again a second later, when the holder has
      committed and the row says whether the connection is still open.
    - A row locked after a concurrent commit is re-checked (closed_at, the paid end as a
      correlated EXISTS) on its newest version, so a close that committed first is never
      undone by a beat.
    - `busy` is an open row, as of the statement's start, that was not updated: it was held.
    """
    presence, room = Presence._meta.db_table, Room._meta.db_table
    return f"""
        WITH beat AS (
            SELECT * FROM unnest(%s::text[], %s::timestamptz[]) AS b(connection_id, at)
        ), held AS (
            SELECT p.id, beat.at FROM {presence} p JOIN beat USING (connection_id)
            WHERE p.closed_at IS NULL
              AND EXISTS (SELECT 1 FROM {room} r WHERE r.id = p.room_id AND r.ends_at > beat.at)
            ORDER BY p.id
            FOR UPDATE OF p SKIP LOCKED
        ), beaten AS (
            UPDATE {presence} p SET last_heartbeat_at = GREATEST(held.at, p.last_heartbeat_at)
            FROM held WHERE p.id = held.id
            RETURNING p.connection_id
        )
        SELECT connection_id, 'alive' FROM beaten
        UNION ALL
        SELECT p.connection_id, 'busy' FROM {presence} p JOIN beat USING (connection_id)
        WHERE p.closed_at IS NULL
          AND EXISTS (SELECT 1 FROM {room} r WHERE r.id = p.room_id AND r.ends_at > beat.at)
          AND p.connection_id NOT IN (SELECT connection_id FROM beaten)
    """  # noqa: S608


def _presences_heartbeat_one_by_one(beats: Mapping[str, datetime]) -> Heartbeats:
    """SQLite (a laptop's `make run`): one UPDATE per beat; it has one writer at a time, so
    nothing is ever held by another transaction here."""
    alive = set()
    for connection_id, at in beats.items():
        if (
            Presence.objects.filter(
                connection_id=connection_id, closed_at__isnull=True, room__ends_at__gt=at
            ).update(last_heartbeat_at=Greatest(Value(at), F("last_heartbeat_at")))
            == 1
        ):
            alive.add(connection_id)
    return Heartbeats(frozenset(alive), frozenset(beats) - frozenset(alive), frozenset())


def participant_remove(
    room_id: int,
    user: User,
    *,
    reason: str,
    actor: User | None = None,
    notice: str = "",
    peers_hear: str = "removed",
    discreet: bool = False,
    now: datetime | None = None,
) -> bool:
    """Take a participant out of the room for good (staff, a ban, or a block between the pair):
    their socket, on whichever process, is told `removed` with `notice` (by default the reason)
    and closed; the peers hear `peer_left` with `peers_hear`; they are not admitted again.
    `discreet` keeps the reason in the room's log only (a block: nobody's browser learns it).
    Returns whether they were in the room at that moment."""
    if not reason.strip():
        raise RoomsError("Say why the participant is removed.")
    notice = notice or f"You were removed from this session: {reason}"
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room_id)
        now = now or timezone.now()  # after the lock, see presence_open
        closed = Presence.objects.filter(room=room, user=user, closed_at__isnull=True).update(
            closed_at=Greatest(Value(now), F("opened_at")), close_reason="removed"
        )
        room_event_write(room, "participant_removed", actor, user=user.pk, reason=reason)
        told = "session_ended" if discreet else reason
        broadcast.participant_send(
            room.pk, user.pk, {"type": "presence.removed", "reason": told, "notice": notice}
        )
        event = {"type": "peer_left", "peer_id": user.pk, "reason": peers_hear}
        broadcast.room_tell(room.pk, event, about=user.pk)
    return bool(closed)


def pair_separate(
    room_id: int, client: User, *, blocker: User, now: datetime | None = None
) -> bool:
    """A block between a room's expert and one of its clients while the room is live: the pair
    is kept apart at once (sessions not live yet are canceled instead:
    `bookings_cancel_for_block`). A private session ends (nobody else is in it); from a group
    session the client is taken out. Nobody is told of the block: the expert hears that the
    client left, the client that the session ended for them (or the session's usual end).
    Returns whether a room was ended or a client taken out."""
    room = Room.objects.get(pk=room_id)
    if room.state != RoomState.LIVE:
        return False
    if not Seat.objects.filter(room=room, client=client).exists():
        raise RoomsError("That person has no seat in this session.")
    if room.kind == RoomKind.PRIVATE:
        from rooms.services.room_state import room_close

        reason = (
            CloseReason.ENDED_BY_EXPERT if blocker.pk == room.expert_id else CloseReason.COMPLETED
        )
        closed = room_close(room.pk, reason=reason, actor=blocker, now=now)
        return closed.close_reason == reason and closed.closed_at is not None
    return participant_remove(
        room.pk,
        client,
        reason="blocked",
        actor=blocker,
        notice="The session has ended for you.",
        peers_hear="left",
        discreet=True,
        now=now,
    )


PRESENCE_CLOSE_REASONS = ("left", "dropped")


def presence_close(
    connection_id: str,
    *,
    reason: str,
    now: datetime | None = None,
    last_heartbeat_at: datetime | None = None,
) -> bool:
    """The socket closed: the participant `left` (peers are told at once) or the connection
    `dropped` (peers hear `peer_reconnecting`, and `peer_left` if the grace passes). Returns
    whether this call ended the presence (a replaced or swept one is already ended).

    `last_heartbeat_at` is a beat still waiting in the process's batch: stored with the close,
    so the row's last heartbeat is the socket's real last one."""
    if reason not in PRESENCE_CLOSE_REASONS:
        raise RoomsError(f"A presence closes as one of: {', '.join(PRESENCE_CLOSE_REASONS)}.")
    with transaction.atomic():
        presence = (
            Presence.objects.select_for_update()
            .filter(connection_id=connection_id, closed_at__isnull=True)
            .first()
        )
        if presence is None:
            return False
        # After the row's lock, and never before the row began.
        now = max(now or timezone.now(), presence.opened_at)
        heartbeat = max(last_heartbeat_at or presence.last_heartbeat_at, presence.last_heartbeat_at)
        Presence.objects.filter(pk=presence.pk).update(
            closed_at=now, close_reason=reason, last_heartbeat_at=heartbeat
        )
        if reason == "left":
            _media_links_end_for(presence, now)
        _presence_ended(presence, reason)
    return True


def _media_links_end_for(presence: Presence, now: datetime) -> None:
    """Someone left on purpose: no media flows with them any more, whoever reported it up.
    The page closes its peer connection to someone who left without a report, so the other
    side's link stayed open, and a rejoin was metered from the rejoin itself instead of from
    when media came back (the whole rest of the call, if it never did). A socket that merely
    dropped keeps its links: media goes on peer to peer without it."""
    links = MediaLink.objects.filter(room_id=presence.room_id, ended_at__isnull=True)
    expert_id = Room.objects.values_list("expert_id", flat=True).get(pk=presence.room_id)
    if presence.user_id != expert_id:
        links = links.filter(client_id=presence.user_id)
    links.update(ended_at=Greatest(Value(now), F("started_at")))


def presences_sweep_stale(now: datetime | None = None) -> int:
    """Close connections silent for HEARTBEAT_STALE_SECONDS at their last heartbeat (a process
    that died never ran its disconnect). Silent as the database sees it, which is up to
    HEARTBEAT_FLUSH_MARGIN_SECONDS behind the sockets (presence_stale_before)."""
    now = now or timezone.now()
    stale = presence_stale_before(now)
    swept = 0
    for presence in Presence.objects.filter(closed_at__isnull=True, last_heartbeat_at__lt=stale):
        with transaction.atomic():
            # The row's own last heartbeat (one may have landed since it was read), never
            # before the start.
            if Presence.objects.filter(
                pk=presence.pk, closed_at__isnull=True, last_heartbeat_at__lt=stale
            ).update(
                closed_at=Greatest(F("last_heartbeat_at"), F("opened_at")), close_reason="stale"
            ):
                swept += 1
                _presence_ended(presence, "stale")
    return swept


def _presence_ended(presence: Presence, reason: str) -> None:
    """Tell the peers, after commit: gone for good, or gone for now with a grace to come back."""
    room_id, user_id = presence.room_id, presence.user_id
    if reason == "left":
        event = {"type": "peer_left", "peer_id": user_id, "reason": "left"}
        broadcast.room_tell(room_id, event, about=user_id)
        return
    broadcast.room_tell(room_id, {"type": "peer_reconnecting", "peer_id": user_id}, about=user_id)
    from rooms.tasks import presence_grace_end

    transaction.on_commit(
        lambda: presence_grace_end.apply_async(
            (room_id, user_id), countdown=settings.RESUME_GRACE_SECONDS + 1
        ),
        robust=True,
    )


def presence_grace_check(room_id: int, user_id: int, *, now: datetime | None = None) -> bool:
    """The grace after a drop has passed: if the participant has not come back, the peers are
    told they left. Returns whether they were told (safe to run any number of times)."""
    now = now or timezone.now()
    presences = Presence.objects.filter(room_id=room_id, user_id=user_id)
    if presences.filter(closed_at__isnull=True).exists():
        return False
    last = presences.order_by("-closed_at").first()
    grace = timedelta(seconds=settings.RESUME_GRACE_SECONDS)
    if last is None or last.closed_at is None or now - last.closed_at <= grace:
        return False
    if last.close_reason not in DROP_REASONS:
        return False
    event = {"type": "peer_left", "peer_id": user_id, "reason": "dropped"}
    broadcast.room_tell(room_id, event, about=user_id)
    return True


def call_stats_record(
    room_id: int,
    reporter: User,
    *,
    peer_id: int,
    rtt_ms: float,
    packet_loss: float,
    bitrate_in_kbps: float,
    bitrate_out_kbps: float,
    candidate_type: str = "",
    now: datetime | None = None,
) -> CallStats:
    """Store one getStats summary of `reporter`'s connection to `peer_id`."""
    if candidate_type and candidate_type not in CANDIDATE_TYPES:
        raise RoomsError("Unknown ICE candidate type.")
    return CallStats.objects.create(
        room_id=room_id,
        reporter=reporter,
        peer_id=peer_id,
        created_at=now or timezone.now(),
        rtt_ms=rtt_ms,
        packet_loss=packet_loss,
        bitrate_in_kbps=bitrate_in_kbps,
        bitrate_out_kbps=bitrate_out_kbps,
        candidate_type=candidate_type,
    )


def media_state_report(
    room_id: int,
    reporter: User,
    *,
    peer_id: int,
    state: str,
    candidate_type: str = "",
    since: datetime | None = None,
    now: datetime | None = None,
) -> MediaLink | None:
    """One side says its media with a peer went up or down. Links are kept per reporter, so
    either side's report counts (their union is what metering reads).

    A report may say `since` when the change happened: for `disconnected` when media last
    arrived, for `connected` when it first did. A report arrives late when it sat in a dead
    connection's send buffer, or was refused while the database restarted and sent again;
    stamping it on arrival would bill the outage, or leave unbilled a call that was going
    on. `since` is taken within MEDIA_REPORT_MAX_DELAY_SECONDS back. Dating a start back bills
    no time that did not happen: metering counts a link only while both people were present
    as the server saw them, and a side that would claim media it did not have can already do
    so on arrival. A `connected` report whose `since` is not after the start of the reporter's
    last link is the one that started it, sent again from a page's outbox behind a later
    `disconnected` the server has had too: it is ignored, or it would reopen a link that
    ended. (Comparing with the start, not the end, keeps a real flap: its `connected` comes
    after the last one in the page's own clock, whatever the offset to the server's.) Except
    after a link that ended at its very start: a `disconnected` dated before the link began
    ends it there, and that is what a repeated `disconnected` of the outage before does when
    it comes again ahead of the `connected` that followed it, both sent again on a new socket;
    that `connected` then reopens the link from its `since` (ignored, it lost the media for the
    rest of the call: the fault harness, a Daphne killed after an outage's reports and before
    the next heartbeat's ack)."""
    if state not in MEDIA_STATES:
        raise RoomsError(f"Media state must be one of {', '.join(MEDIA_STATES)}.")
    if candidate_type and candidate_type not in CANDIDATE_TYPES:
        raise RoomsError("Unknown ICE candidate type.")
    room = Room.objects.get(pk=room_id)
    pair = {reporter.pk, peer_id}
    if room.expert_id not in pair or len(pair) != 2:
        raise RoomsError("Media is reported between the expert and one client.")
    client_id = (pair - {room.expert_id}).pop()
    if not Seat.objects.filter(room=room, client_id=client_id, state=SeatState.CONFIRMED).exists():
        raise RoomsError("That peer has no seat in this room.")
    with transaction.atomic():
        # The room's lock orders this report with the close: a link opens only in a room that
        # is still open, and the time is read after the lock (see room_close).
        room = Room.objects.select_for_update().get(pk=room_id)
        now = now or timezone.now()
        open_link = (
            MediaLink.objects.select_for_update()
            .filter(room=room, client_id=client_id, reported_by=reporter, ended_at__isnull=True)
            .first()
        )
        at = now
        if since is not None:
            earliest = now - timedelta(seconds=settings.MEDIA_REPORT_MAX_DELAY_SECONDS)
            at = min(now, max(since, earliest))
        if state == "connected":
            if room.state not in (RoomState.OPEN, RoomState.LIVE) or now >= room.ends_at:
                raise RoomsError("This session has ended; its media is no longer metered.")
            if open_link is not None:
                return open_link
            last = (
                MediaLink.objects.filter(room=room, client_id=client_id, reported_by=reporter)
                .order_by("-started_at")
                .values_list("started_at", "ended_at")
                .first()
            )
            if since is not None and last is not None and since <= last[0] != last[1]:
                return None
            return MediaLink.objects.create(
                room=room,
                client_id=client_id,
                reported_by=reporter,
                started_at=at,
                candidate_type=candidate_type,
            )
        if open_link is not None:
            MediaLink.objects.filter(pk=open_link.pk).update(ended_at=max(at, open_link.started_at))
        return None
