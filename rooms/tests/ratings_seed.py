"""Ratings for tests of what people see of them: each on a closed session of its own between
the expert and the client (the rating service's own rules are tested through rating_give)."""

from __future__ import annotations

import datetime as dt
import itertools

from django.utils import timezone

from accounts.models import User
from accounts.tests.factories import UserFactory
from rooms.models import CloseReason, Pricing, Rating, Room, RoomKind, RoomState

_days = itertools.count(1)


def rating_add(
    expert: User,
    stars: int,
    comment: str = "",
    *,
    client: User | None = None,
    hidden: bool = False,
    days_ago: float | None = None,
) -> Rating:
    """A rating given `days_ago` (default: each call a day before the last) after a closed
    one-hour session; no two sessions of the expert overlap."""
    ago = dt.timedelta(days=days_ago if days_ago is not None else next(_days))
    given = timezone.now() - ago
    starts = given - dt.timedelta(hours=2)
    room = Room.objects.create(
        expert=expert,
        kind=RoomKind.PRIVATE,
        title="Architecture review",
        starts_at=starts,
        ends_at=starts + dt.timedelta(hours=1),
        blocked_from=starts,
        blocked_until=starts + dt.timedelta(hours=1),
        state=RoomState.CLOSED,
        closed_at=starts + dt.timedelta(hours=1),
        close_reason=CloseReason.COMPLETED,
        pricing=Pricing.FIXED,
        price_minor=5000,
        currency="EUR",
        late_cancel_fee_percent=50,
        no_show_fee_percent=50,
    )
    return Rating.objects.create(
        room=room,
        client=client or UserFactory.create(),
        expert=expert,
        stars=stars,
        comment=comment,
        hidden=hidden,
        created_at=given,
    )
