from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_POST

from accounts.models import User
from moderation import services
from moderation.forms import ReportForm
from rooms.models import Room


@login_required
@require_POST
def report(request: HttpRequest, room_id: int) -> HttpResponse:
    """Report a session to staff, from its page (after the call, or during it)."""
    room = get_object_or_404(Room, pk=room_id)
    user = request.user
    assert isinstance(user, User)  # noqa: S101
    form = ReportForm(request.POST)
    if not form.is_valid():
        problems = "; ".join(
            f"{form.fields[name].label}: {' '.join(str(e) for e in errors)}"
            for name, errors in form.errors.items()
        )
        messages.error(request, f"The report was not sent. {problems}")
        return redirect("rooms:join", room_id=room.pk)
    try:
        services.report_file(
            room.pk, user, category=form.cleaned_data["category"], text=form.cleaned_data["text"]
        )
    except services.ModerationError as refused:
        messages.error(request, str(refused))
    else:
        messages.success(request, "Thank you: staff will look at your report.")
    return redirect("rooms:join", room_id=room.pk)
