"""Who is in a room, as the server sees it: connections, heartbeats, replacement, resume, and
the media links the participants report.

Presence lives in the database, never only in a process: several Daphne processes serve one
room, and a process that dies leaves rows the sweeper closes at their last heartbeat.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import User
from accounts.selectors import users_blocked_between
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
from rooms.services.room_state import room_catch_up, room_mark_live, room_open

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


def room_admission_check(room: Room, user: User, *, now: datetime | None = None) -> None:
    """Raise JoinRefused unless `user` may be in `room` now: its expert or a confirmed seat
    holder, not blocked by the other side, active, the room open or live (by the clock: a
    lobby whose time has come counts as open, a room past its paid end as ended) and not
    full."""
    now = now or timezone.now()
    if not user.is_active:
        raise JoinRefused("blocked", "This account is suspended.")
    is_expert = room.expert_id == user.pk
    if not is_expert:
        seat = Seat.objects.filter(room=room, client=user).order_by("-pk").first()
        if seat is None:
            raise JoinRefused("not_participant", "This room is for its expert and its clients.")
        if room.state in (RoomState.CLOSED, RoomState.CANCELED):
            # Said before the seat's state: a canceled session cancels its seats too, and
            # "not paid" would send the client to pay for a session that is gone.
            raise JoinRefused("room_ended", f"This session is {room.get_state_display().lower()}.")
        if seat.state != SeatState.CONFIRMED:
            raise JoinRefused("not_paid", "Your seat in this session is not paid.")
        if users_blocked_between(user.pk, room.expert_id):
            raise JoinRefused("blocked", "You cannot join this session.")
    lobby_opens_at = room.starts_at - timedelta(minutes=settings.LOBBY_OPENS_MINUTES)
    if room.state == RoomState.SCHEDULED and now < lobby_opens_at:
        raise JoinRefused("too_early", "The lobby opens 10 minutes before the start.")
    if room.state in (RoomState.CLOSED, RoomState.CANCELED):
        raise JoinRefused("room_ended", f"This session is {room.get_state_display().lower()}.")
    if now >= room.ends_at:
        raise JoinRefused("room_ended", "The booked time of this session is over.")
    if RoomEvent.objects.filter(room=room, kind="participant_removed", data__user=user.pk).exists():
        raise JoinRefused("removed", "You were removed from this session.")
    others = (
        Presence.objects.filter(room=room, closed_at__isnull=True)
        .exclude(user=user)
        .values("user_id")
        .distinct()
        .count()
    )
    # The expert and one place per seat; only a seat changing hands could overfill it.
    if others >= room.capacity + 1:
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
    come opens, and a room whose close is due (its paid end, a no-show) closes first."""
    if now is None:
        try:
            room_catch_up(room_id)
        except Room.DoesNotExist:
            raise
        except Exception:
            # The sweep will try again; admission below still follows the clock.
            logger.exception("Catching room %s up with the clock failed.", room_id)
    with transaction.atomic():
        room = Room.objects.select_for_update().get(pk=room_id)
        # Read after the room's lock: every presence of this room committed before it
        # started no earlier, so the one this replaces never ends before it began.
        now = now or timezone.now()
        room_admission_check(room, user, now=now)
        if room.state == RoomState.SCHEDULED:
            # The lobby's time has come but no sweep has opened it yet.
            room_open(room.pk, now=now)
            room.refresh_from_db()
        window = now - timedelta(seconds=JOINS_WINDOW_SECONDS)
        if (
            Presence.objects.filter(room=room, user=user, opened_at__gt=window).count()
            >= settings.SIGNALING_JOINS_MAX
        ):
            raise JoinRefused(
                "too_many_joins",
                f"Too many connections in a short time; try again in {JOINS_WINDOW_SECONDS} s.",
            )
        mine = Presence.objects.select_for_update().filter(room=room, user=user)
        old = mine.filter(closed_at__isnull=True).first()
        grace = timedelta(seconds=settings.RESUME_GRACE_SECONDS)
        last_closed = mine.filter(closed_at__isnull=False).order_by("-closed_at").first()
        resumed = old is not None or (
            last_closed is not None
            and last_closed.closed_at is not None
            and now - last_closed.closed_at <= grace
        )
        if old is not None:
            Presence.objects.filter(pk=old.pk).update(
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
                room.pk, user.pk, {"type": "presence.replaced", "connection_id": old.connection_id}
            )
        if resumed:
            broadcast.room_tell(
                room.pk, {"type": "peer_resumed", "peer_id": user.pk}, about=user.pk
            )
        else:
            peer = participant(room, user)
            broadcast.room_tell(room.pk, {"type": "peer_joined", "peer": peer}, about=user.pk)
        went_live = (
            room.state == RoomState.OPEN
            and _both_sides_in(room)
            and room_mark_live(room.pk, at=now)
        )
    return Joined(presence, old.connection_id if old else None, resumed, went_live)


def _both_sides_in(room: Room) -> bool:
    inside = set(
        Presence.objects.filter(room=room, closed_at__isnull=True).values_list("user_id", flat=True)
    )
    holders = Seat.objects.filter(room=room, state=SeatState.CONFIRMED, client_id__in=inside)
    return room.expert_id in inside and holders.exists()


def presence_heartbeat(connection_id: str, *, now: datetime | None = None) -> bool:
    """A heartbeat; False when the connection is no longer open (replaced, swept, room closed)
    or the room's paid time is over, so the consumer closes its socket."""
    now = now or timezone.now()
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        cursor.execute(_heartbeat_sql(), [at, connection_id, at])
        return bool(cursor.rowcount == 1)


@functools.cache
def _heartbeat_sql() -> str:
    """The heartbeat's one UPDATE, written out: every socket sends one every 5 s, and building
    it through the ORM (the EXISTS and GREATEST below) tripled its cost in Python, which is
    what bounds how many sockets one Daphne process holds (bench/signaling.py).

    - Never backwards (GREATEST): a heartbeat that read its clock before the row it updates
      was written cannot move the last heartbeat before the start, where the sweeper would
      end the presence.
    - The paid end is an EXISTS on the room, not a join: a condition through a join makes
      Django's UPDATE `WHERE id IN (SELECT …)`, and PostgreSQL does not re-check a subquery
      after waiting for the row's lock, so a heartbeat queued behind a close revived the row.
      A correlated EXISTS is re-checked with the row.
    """
    greatest = "GREATEST" if connection.vendor == "postgresql" else "MAX"
    presence, room = Presence._meta.db_table, Room._meta.db_table
    return (
        f"UPDATE {presence} SET last_heartbeat_at = {greatest}(%s, last_heartbeat_at)"  # noqa: S608
        f" WHERE connection_id = %s AND closed_at IS NULL AND EXISTS (SELECT 1 FROM {room}"
        f" WHERE {room}.id = {presence}.room_id AND {room}.ends_at > %s)"
    )


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


def presence_close(connection_id: str, *, reason: str, now: datetime | None = None) -> bool:
    """The socket closed: the participant `left` (peers are told at once) or the connection
    `dropped` (peers hear `peer_reconnecting`, and `peer_left` if the grace passes). Returns
    whether this call ended the presence (a replaced or swept one is already ended)."""
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
        Presence.objects.filter(pk=presence.pk).update(closed_at=now, close_reason=reason)
        _presence_ended(presence, reason)
    return True


def presences_sweep_stale(now: datetime | None = None) -> int:
    """Close connections silent for HEARTBEAT_STALE_SECONDS at their last heartbeat (a process
    that died never ran its disconnect)."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.HEARTBEAT_STALE_SECONDS)
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

    A `disconnected` report may say `since` when the reporter last received media: a report
    that sat in a dead connection's send buffer arrives late, and stamping it on arrival would
    bill the outage. Only an end may be dated back, within MEDIA_REPORT_MAX_DELAY_SECONDS and
    never before the link began: it can only shorten the reporter's own link, and the other
    side's reports still count in full, so neither side can bill time that did not happen."""
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
        if state == "connected":
            if room.state not in (RoomState.OPEN, RoomState.LIVE) or now >= room.ends_at:
                raise RoomsError("This session has ended; its media is no longer metered.")
            if open_link is not None:
                return open_link
            return MediaLink.objects.create(
                room=room,
                client_id=client_id,
                reported_by=reporter,
                started_at=now,
                candidate_type=candidate_type,
            )
        if open_link is not None:
            ended_at = now
            if since is not None:
                earliest = now - timedelta(seconds=settings.MEDIA_REPORT_MAX_DELAY_SECONDS)
                ended_at = min(now, max(since, earliest))
            MediaLink.objects.filter(pk=open_link.pk).update(
                ended_at=max(ended_at, open_link.started_at)
            )
        return None
