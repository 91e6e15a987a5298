"""The room's story page in admin (RoomAdmin's `<id>/story/` URL): read-only, for staff
deciding a dispute. The reading is moderation.story's; this only serves it."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from moderation.story import CATEGORIES, Entry, Link, room_story
from rooms.models import Room


def story_view(model_admin: ModelAdmin[Any], request: HttpRequest, room_id: int) -> HttpResponse:
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    # The page shows payments and reports too; seeing rooms is the least it asks.
    if not model_admin.has_view_permission(request):
        raise PermissionDenied("Reading a room's story needs the permission to view rooms.")
    try:
        # Told in the viewer's zone (TimezoneMiddleware activated it), like every page.
        story = room_story(room_id, timezone.get_current_timezone())
    except Room.DoesNotExist:
        raise Http404(f"There is no room {room_id}.") from None
    shown = [key for key in request.GET.getlist("only") if key in CATEGORIES]
    rows = _rows(story.entries, shown)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"The story of room {story.room.pk}",
        "subtitle": story.room.title,
        "opts": Room._meta,
        "story": story,
        "rows": rows,
        "shown": shown,
        "hidden_count": len(story.entries) - len(rows),
    }
    return TemplateResponse(request, "admin/moderation/room_story.html", context)


def _rows(entries: tuple[Entry, ...], shown: list[str]) -> list[dict[str, Any]]:
    """The entries of the kinds shown (all when none is chosen), with their links resolved and
    a day heading where the day changes, in the viewer's zone. Numbers count in the whole
    story, so a link to #entry-42 means the same entry whatever was filtered."""
    rows = []
    day = ""
    for number, entry in enumerate(entries, start=1):
        if shown and entry.category not in shown:
            continue
        at = timezone.localtime(entry.at)
        millis = f".{at.microsecond // 1000:03d}"
        rows.append(
            {
                "entry": entry,
                "number": number,
                "category": CATEGORIES[entry.category],
                "new_day": f"{at:%Y-%m-%d}" if f"{at:%Y-%m-%d}" != day else "",
                "clock": f"{at:%H:%M:%S}",
                "millis": millis,
                "utc": f"{entry.at.astimezone(UTC):%Y-%m-%d %H:%M:%S}{millis} UTC",
                "links": [(link.text, href) for link in entry.links if (href := _href(link))],
            }
        )
        day = f"{at:%Y-%m-%d}"
    return rows


def _href(link: Link) -> str:
    # Only admins that are registered have a change page (disputes may have none yet).
    try:
        return reverse(f"admin:{link.admin_name}_change", args=[link.pk])
    except NoReverseMatch:
        return ""
