"""The report form, for the pages of lower layers (the room page) that offer it."""

from __future__ import annotations

from typing import Any

from django import template

from moderation.forms import ReportForm
from rooms.models import Room

register = template.Library()


@register.inclusion_tag("moderation/_report_form.html")
def report_form(room: Room) -> dict[str, Any]:
    return {"room": room, "form": ReportForm()}
