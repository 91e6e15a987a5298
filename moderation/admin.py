"""Staff's moderation desk in Django admin: live rooms and what can be done to them, every
room's story, reports, disputes, bans, and the logs of staff actions and of blocks. Every
button calls a service in moderation/services; nothing here assigns a state. The admin site
itself asks for staff and a session that passed two-factor authentication (config/admin.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Prefetch, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from accounts.admin import AdminExtension, ExpertProfileAdmin, ReadOnlyAdmin, UserAdmin
from accounts.models import ExpertProfile, User
from billing.pricing import format_money
from moderation import services
from moderation.admin_forms import (
    DisputeDecisionForm,
    LiveActionForm,
    ReportResolutionForm,
    StaffReasonForm,
)
from moderation.models import (
    BlockEvent,
    Dispute,
    DisputeSource,
    LiveRoom,
    Report,
    ReportState,
    StaffAction,
)
from rooms.errors import RoomsError
from rooms.models import CloseReason, Presence, Rating, Room, RoomState, Seat
from rooms.services.feedback import rating_hide, rating_unhide


def _staff_user(request: HttpRequest, permission: str) -> User:
    """The acting staff member, refused unless they hold `permission` (superusers hold all)."""
    user = request.user
    if not isinstance(user, User) or not user.has_perm(permission):
        raise PermissionDenied("Your staff account lacks the permission for this action.")
    return user


def _story_link(room_id: int, text: str = "Story") -> str:
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:rooms_room_story", args=[room_id]), text
    )


# --- Rooms: every room, with its story ------------------------------------------------------


@admin.register(Room)
class RoomAdmin(ReadOnlyAdmin):
    list_display = ("pk", "title", "expert", "starts_at", "state", "close_reason", "story")
    list_filter = ("state", "close_reason", "kind")
    search_fields = ("=id", "title", "expert__email", "expert__display_name")
    list_select_related = ("expert",)
    date_hierarchy = "starts_at"
    readonly_fields = [field.name for field in Room._meta.fields] + ["story"]

    @admin.display(description="Story")
    def story(self, room: Room) -> str:
        return _story_link(room.pk, "The room's story")

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:room_id>/story/",
                self.admin_site.admin_view(self.story_view),
                name="rooms_room_story",
            ),
            *super().get_urls(),
        ]

    def story_view(self, request: HttpRequest, room_id: int) -> HttpResponse:
        from moderation.admin_story import story_view

        return story_view(self, request, room_id)


# --- Live rooms ----------------------------------------------------------------------------

LIVE_STATES = (RoomState.OPEN, RoomState.LIVE)


@admin.register(LiveRoom)
class LiveRoomAdmin(ReadOnlyAdmin):
    """Rooms open or live now: who is in and since when, the state and the time left. A room's
    page has the actions: end it, remove a participant, ban a user."""

    list_display = ("room", "expert", "state", "in_the_room", "live_since", "time_left", "story")
    list_display_links = None
    list_filter = ("state", "kind")
    search_fields = ("=id", "title", "expert__email", "seats__client__email")
    ordering = ("starts_at",)
    change_list_template = "admin/moderation/liveroom/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[LiveRoom]:
        inside = Presence.objects.filter(closed_at__isnull=True).select_related("user")
        return (
            super()
            .get_queryset(request)
            .filter(state__in=LIVE_STATES)
            .select_related("expert")
            .prefetch_related(Prefetch("presences", queryset=inside, to_attr="inside"))
        )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("moderation.view_liveroom") or request.user.has_perm(
            "moderation.change_liveroom"
        )

    @admin.display(description="Room")
    def room(self, room: LiveRoom) -> str:
        return format_html(
            '<a href="{}">{}</a> <span class="quiet">#{}</span>',
            reverse("admin:moderation_liveroom_live", args=[room.pk]),
            room.title,
            room.pk,
        )

    @admin.display(description="In the room (since, UTC)")
    def in_the_room(self, room: LiveRoom) -> str:
        inside = sorted(getattr(room, "inside", []), key=lambda presence: presence.opened_at)
        if not inside:
            return "nobody"
        return format_html_join(
            ", ",
            "{} ({}){}",
            (
                (
                    presence.user.display_name,
                    f"{presence.opened_at:%H:%M:%S}",
                    " — expert" if presence.user_id == room.expert_id else "",
                )
                for presence in inside
            ),
        )

    @admin.display(description="Live since (UTC)")
    def live_since(self, room: LiveRoom) -> str:
        return f"{room.live_at:%H:%M:%S}" if room.live_at else "not yet"

    @admin.display(description="Time left")
    def time_left(self, room: LiveRoom) -> str:
        return _duration(room.ends_at - timezone.now())

    @admin.display(description="Story")
    def story(self, room: LiveRoom) -> str:
        return _story_link(room.pk)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:room_id>/live/",
                self.admin_site.admin_view(self.live_view),
                name="moderation_liveroom_live",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        if not object_id.isdigit():
            raise Http404("There is no such room.")
        return redirect("admin:moderation_liveroom_live", int(object_id))

    def live_view(self, request: HttpRequest, room_id: int) -> HttpResponse:
        """One live room: who is in, since when, seats and their state, and the actions."""
        if not self.has_view_permission(request):
            raise PermissionDenied("Your staff account cannot see live rooms.")
        room = get_object_or_404(Room.objects.select_related("expert"), pk=room_id)
        form = LiveActionForm(request.POST or None)
        status = 200
        if request.method == "POST":
            actor = _staff_user(request, "moderation.change_liveroom")
            done = form.is_valid() and self._live_act(request, room, actor, form)
            if done:
                return HttpResponseRedirect(request.path)
            status = 400
        now = timezone.now()
        inside = list(
            Presence.objects.filter(room=room, closed_at__isnull=True)
            .select_related("user")
            .order_by("opened_at")
        )
        seats = list(Seat.objects.filter(room=room).select_related("client").order_by("pk"))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Live room: {room.title}",
            "opts": self.model._meta,
            "room": room,
            "is_live": room.state in LIVE_STATES,
            "inside": [
                {
                    "presence": presence,
                    "for": _duration(now - presence.opened_at),
                    "silent": _duration(now - presence.last_heartbeat_at),
                    "is_expert": presence.user_id == room.expert_id,
                }
                for presence in inside
            ],
            "seats": seats,
            "time_left": _duration(room.ends_at - now),
            "form": form,
            "actions": StaffAction.objects.filter(room=room).select_related("actor", "subject"),
        }
        return TemplateResponse(
            request, "admin/moderation/liveroom/live.html", context, status=status
        )

    def _live_act(
        self, request: HttpRequest, room: Room, actor: User, form: LiveActionForm
    ) -> bool:
        action, reason = form.cleaned_data["action"], form.cleaned_data["reason"]
        user_id = form.cleaned_data.get("user")
        people = {
            room.expert_id,
            *Seat.objects.filter(room=room).values_list("client_id", flat=True),
        }
        if user_id is not None and user_id not in people:
            form.add_error(None, "That person is not in this room; ban them from the user admin.")
            return False
        if action == "ban" and not actor.has_perm("accounts.change_user"):
            form.add_error(None, "Banning needs the permission to change users.")
            return False
        try:
            if action == "end":
                services.staff_room_end(room.pk, actor=actor, reason=reason)
                done = "Room ended; every participant was told and disconnected."
            elif action == "remove":
                assert user_id is not None  # noqa: S101 - the form requires it
                was_in = services.staff_participant_remove(
                    room.pk, user_id, actor=actor, reason=reason
                )
                done = "Removed" + ("" if was_in else " (they were not connected right now)")
                done += "; they cannot rejoin this room."
            else:
                assert user_id is not None  # noqa: S101 - the form requires it
                rooms = services.staff_user_ban(user_id, actor=actor, reason=reason)
                done = f"Banned; taken out of {len(rooms)} room(s) in progress."
        except (services.ModerationError, User.DoesNotExist) as refused:
            form.add_error(None, str(refused))
            return False
        self.message_user(request, done, messages.SUCCESS)
        return True


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 0:
        return "over"
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


# --- Disputes -------------------------------------------------------------------------------


@admin.register(Dispute)
class DisputeAdmin(ReadOnlyAdmin):
    list_display = (
        "pk",
        "created_at",
        "state",
        "source",
        "reason",
        "client",
        "room",
        "charged",
        "refunded",
        "story",
    )
    list_filter = ("state", "source", "reason")
    search_fields = ("=id", "client__email", "seat__room__title", "provider_dispute_id", "text")
    list_select_related = ("client", "seat__room")
    ordering = ("-created_at",)
    readonly_fields = (
        "decide",
        "seat",
        "payment",
        "client",
        "source",
        "reason",
        "text",
        "provider_dispute_id",
        "state",
        "charged",
        "refunded",
        "resolution_note",
        "resolved_by",
        "resolved_at",
        "created_at",
        "story",
    )
    fields = readonly_fields

    @admin.display(description="Room")
    def room(self, dispute: Dispute) -> str:
        return dispute.seat.room.title

    @admin.display(description="Charged")
    def charged(self, dispute: Dispute) -> str:
        return format_money(dispute.charged_minor, dispute.currency)

    @admin.display(description="Refunded")
    def refunded(self, dispute: Dispute) -> str:
        return format_money(dispute.refund_minor, dispute.currency)

    @admin.display(description="Story")
    def story(self, dispute: Dispute) -> str:
        return _story_link(dispute.seat.room_id, "The room's story")

    @admin.display(description="Decision")
    def decide(self, dispute: Dispute) -> str:
        if not dispute.is_open:
            return f"Decided: {dispute.get_state_display()}."
        if dispute.source == DisputeSource.CHARGEBACK:
            return "The card's bank decides this chargeback; its outcome arrives by webhook."
        return format_html(
            '<a class="button" href="{}">Decide…</a>',
            reverse("admin:moderation_dispute_decide", args=[dispute.pk]),
        )

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:dispute_id>/decide/",
                self.admin_site.admin_view(self.decide_view),
                name="moderation_dispute_decide",
            ),
            *super().get_urls(),
        ]

    def decide_view(self, request: HttpRequest, dispute_id: int) -> HttpResponse:
        """Full refund, partial refund or rejection, with the note the client reads."""
        actor = _staff_user(request, "moderation.change_dispute")
        dispute = get_object_or_404(
            Dispute.objects.select_related("payment", "client", "seat__room"), pk=dispute_id
        )
        payment = dispute.payment
        form = DisputeDecisionForm(request.POST or None, currency=payment.currency)
        if request.method == "POST" and form.is_valid():
            try:
                services.dispute_resolve(
                    dispute.pk,
                    actor=actor,
                    outcome=form.cleaned_data["outcome"],
                    note=form.cleaned_data["note"],
                    refund_minor=form.cleaned_data["refund_minor"],
                )
            except services.ModerationError as refused:
                form.add_error(None, str(refused))
            else:
                self.message_user(
                    request, "Decided; the client is told by email.", messages.SUCCESS
                )
                return redirect("admin:moderation_dispute_change", dispute.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Decide dispute {dispute.pk}",
            "opts": self.model._meta,
            "dispute": dispute,
            "deadline": services.dispute_deadline(payment.settlement),
            "refundable": format_money(payment.refundable_minor, payment.currency),
            "charged": format_money(payment.captured_minor, payment.currency),
            "already_refunded": format_money(payment.refunded_minor, payment.currency),
            "form": form,
        }
        status = 400 if request.method == "POST" else 200
        return TemplateResponse(
            request, "admin/moderation/dispute/decide.html", context, status=status
        )


# --- Reports --------------------------------------------------------------------------------


@admin.register(Report)
class ReportAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "category", "room", "reporter_name", "about", "state", "story")
    list_filter = ("state", "category", "automatic")
    search_fields = ("text", "reporter__email", "about__email", "room__title")
    list_select_related = ("room", "reporter", "about")
    ordering = ("state", "-created_at")  # open first
    readonly_fields = (
        "resolve",
        "room",
        "reporter_name",
        "about",
        "category",
        "text",
        "state",
        "resolution",
        "resolved_by",
        "resolved_at",
        "created_at",
        "story",
    )
    fields = readonly_fields

    @admin.display(description="Reporter")
    def reporter_name(self, report: Report) -> str:
        return str(report.reporter) if report.reporter else "Parley (automatic)"

    @admin.display(description="Story")
    def story(self, report: Report) -> str:
        return _story_link(report.room_id, "The room's story")

    @admin.display(description="Resolution")
    def resolve(self, report: Report) -> str:
        if report.state != ReportState.OPEN:
            return "Resolved."
        return format_html(
            '<a class="button" href="{}">Resolve…</a>',
            reverse("admin:moderation_report_resolve", args=[report.pk]),
        )

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:report_id>/resolve/",
                self.admin_site.admin_view(self.resolve_view),
                name="moderation_report_resolve",
            ),
            *super().get_urls(),
        ]

    def resolve_view(self, request: HttpRequest, report_id: int) -> HttpResponse:
        actor = _staff_user(request, "moderation.change_report")
        report = get_object_or_404(Report.objects.select_related("room"), pk=report_id)
        form = ReportResolutionForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                services.report_resolve(
                    report.pk, actor=actor, resolution=form.cleaned_data["resolution"]
                )
            except services.ModerationError as refused:
                form.add_error(None, str(refused))
            else:
                self.message_user(request, "Report resolved.", messages.SUCCESS)
                return redirect("admin:moderation_report_change", report.pk)
        return _reason_page(
            self,
            request,
            form,
            title=f"Resolve report {report.pk}",
            lead=f"{report.get_category_display()} — “{report.text}”",
            submit="Resolve",
        )


def _reason_page(
    model_admin: admin.ModelAdmin[Any],
    request: HttpRequest,
    form: Any,
    *,
    title: str,
    lead: str,
    submit: str,
    hidden: list[tuple[str, Any]] | None = None,
) -> HttpResponse:
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": model_admin.model._meta,
        "lead": lead,
        "form": form,
        "submit": submit,
        "hidden": hidden or [],
    }
    status = 400 if request.method == "POST" else 200
    return TemplateResponse(request, "admin/moderation/reason.html", context, status=status)


# --- Staff actions: the log ------------------------------------------------------------------


@admin.register(StaffAction)
class StaffActionAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "kind", "actor", "subject", "room", "reason")
    list_filter = ("kind",)
    search_fields = ("reason", "actor__email", "subject__email", "room__title")
    list_select_related = ("actor", "subject", "room")
    readonly_fields = [field.name for field in StaffAction._meta.fields]


@admin.register(BlockEvent)
class BlockEventAdmin(ReadOnlyAdmin):
    """Who blocked or unblocked whom, and when; a standing block is accounts' Block row."""

    list_display = ("created_at", "kind", "blocker", "blocked", "reason")
    list_filter = ("kind",)
    search_fields = ("blocker__email", "blocked__email", "reason")
    list_select_related = ("blocker", "blocked")
    readonly_fields = [field.name for field in BlockEvent._meta.fields]


# --- People: bans on the user admin, no-shows on the expert's page --------------------------
# Accounts owns the one admin of User and of ExpertProfile; moderation adds to them through
# their documented hook (accounts/admin.py) instead of replacing them.


@admin.action(description="Ban selected users (with a reason)", permissions=["change"])
def ban(
    model_admin: admin.ModelAdmin[User], request: HttpRequest, queryset: QuerySet[User]
) -> HttpResponse | None:
    return _ban_or_unban(model_admin, request, queryset, ban=True)


@admin.action(description="Lift the ban of selected users (with a reason)", permissions=["change"])
def unban(
    model_admin: admin.ModelAdmin[User], request: HttpRequest, queryset: QuerySet[User]
) -> HttpResponse | None:
    return _ban_or_unban(model_admin, request, queryset, ban=False)


def _ban_or_unban(
    model_admin: admin.ModelAdmin[User],
    request: HttpRequest,
    queryset: QuerySet[User],
    *,
    ban: bool,
) -> HttpResponse | None:
    actor = _staff_user(request, "accounts.change_user")
    form = StaffReasonForm(request.POST if "confirm" in request.POST else None)
    if form.is_bound and form.is_valid():
        for user in queryset:
            try:
                if ban:
                    services.staff_user_ban(
                        user.pk, actor=actor, reason=form.cleaned_data["reason"]
                    )
                else:
                    services.staff_user_unban(
                        user.pk, actor=actor, reason=form.cleaned_data["reason"]
                    )
            except services.ModerationError as refused:
                model_admin.message_user(request, f"{user.email}: {refused}", messages.ERROR)
            else:
                done = "banned" if ban else "ban lifted"
                model_admin.message_user(request, f"{user.email}: {done}.", messages.SUCCESS)
        return None
    names = ", ".join(user.email for user in queryset)
    return _reason_page(
        model_admin,
        request,
        form,
        title="Ban users" if ban else "Lift bans",
        lead=(
            f"Suspends {names}: they are signed out, taken out of any room in progress "
            "(rooms they host end), and cannot sign in again until the ban is lifted."
            if ban
            else f"Lets {names} sign in again."
        ),
        submit="Ban" if ban else "Lift the ban",
        hidden=[
            ("action", "ban" if ban else "unban"),
            ("confirm", "1"),
            *((admin.helpers.ACTION_CHECKBOX_NAME, user.pk) for user in queryset),
        ],
    )


# `is_active` changes only through a ban or its lifting, each a staff action with a reason.
UserAdmin.extend(AdminExtension(app="moderation", panels=("is_active",), actions=(ban, unban)))


NO_SHOW_WINDOW = timedelta(days=90)


def _no_shows_count(profiles: QuerySet[ExpertProfile]) -> QuerySet[ExpertProfile]:
    since = timezone.now() - NO_SHOW_WINDOW
    no_show = Q(
        user__hosted_rooms__close_reason=CloseReason.EXPERT_NO_SHOW,
        user__hosted_rooms__closed_at__gte=since,
    )
    counted: QuerySet[ExpertProfile] = profiles.annotate(
        no_show_count=Count("user__hosted_rooms", filter=no_show)
    )
    return counted


@admin.display(description="No-shows (90 days)", ordering="no_show_count")
def no_shows(profile: ExpertProfile) -> str:
    count = getattr(profile, "no_show_count", 0)
    if count >= 2:
        return format_html('<strong style="color:#ba2121">{} — repeated</strong>', count)
    return str(count)


@admin.display(description="No-shows")
def no_show_rooms(profile: ExpertProfile) -> str:
    rooms = Room.objects.filter(
        expert_id=profile.user_id, close_reason=CloseReason.EXPERT_NO_SHOW
    ).order_by("-starts_at")[:50]
    if not rooms:
        return "None."
    total = len(rooms)
    lead = "Repeated: " if total >= 2 else ""
    items = format_html_join(
        "",
        "<li>{} — {}</li>",
        (
            (f"{room.starts_at:%Y-%m-%d %H:%M} UTC", _story_link(room.pk, room.title))
            for room in rooms
        ),
    )
    return format_html("<p>{}{} session(s) not joined.</p><ul>{}</ul>", lead, total, items)


# The expert's no-shows: repeated ones stand out in the list and on the page, each linked to
# its room's story.
ExpertProfileAdmin.extend(
    AdminExtension(
        app="moderation",
        columns=(no_shows,),
        panels=(no_show_rooms,),
        annotate=_no_shows_count,
    )
)


# --- Ratings: staff hide a review (and show it again), with a reason -------------------------


@admin.register(Rating)
class RatingAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Ratings as clients gave them: staff change nothing but whether one is hidden, and only
    through the actions, each with a reason kept in the room's story."""

    list_display = ("pk", "expert", "client", "stars", "short_comment", "hidden", "created_at")
    list_filter = ("hidden", "stars")
    search_fields = ("=id", "expert__email", "expert__display_name", "client__email", "comment")
    list_select_related = ("expert", "client")
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in Rating._meta.fields] + ["story"]
    actions = ["hide", "unhide"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Comment")
    def short_comment(self, rating: Rating) -> str:
        return rating.comment if len(rating.comment) <= 80 else f"{rating.comment[:79]}…"

    @admin.display(description="Story")
    def story(self, rating: Rating) -> str:
        return _story_link(rating.room_id, "The room's story")

    @admin.action(description="Hide selected ratings (with a reason)", permissions=["change"])
    def hide(self, request: HttpRequest, queryset: QuerySet[Rating]) -> HttpResponse | None:
        return self._hide_or_unhide(request, queryset, hide=True)

    @admin.action(
        description="Show selected hidden ratings again (with a reason)", permissions=["change"]
    )
    def unhide(self, request: HttpRequest, queryset: QuerySet[Rating]) -> HttpResponse | None:
        return self._hide_or_unhide(request, queryset, hide=False)

    def _hide_or_unhide(
        self, request: HttpRequest, queryset: QuerySet[Rating], *, hide: bool
    ) -> HttpResponse | None:
        actor = _staff_user(request, "rooms.change_rating")
        form = StaffReasonForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            change = rating_hide if hide else rating_unhide
            for rating in queryset:
                try:
                    change(rating.pk, actor, reason=form.cleaned_data["reason"])
                except RoomsError as refused:
                    self.message_user(request, f"Rating #{rating.pk}: {refused}", messages.ERROR)
                else:
                    done = "hidden" if hide else "shown again"
                    self.message_user(request, f"Rating #{rating.pk}: {done}.", messages.SUCCESS)
            return None
        ids = ", ".join(f"#{rating.pk}" for rating in queryset)
        return _reason_page(
            self,
            request,
            form,
            title="Hide ratings" if hide else "Show ratings again",
            lead=(
                f"Takes rating(s) {ids} off the expert's card and page: out of the average and "
                "the reviews. The expert is told only how many of theirs are hidden."
                if hide
                else f"Puts rating(s) {ids} back on the expert's card and page."
            ),
            submit="Hide" if hide else "Show again",
            hidden=[
                ("action", "hide" if hide else "unhide"),
                ("confirm", "1"),
                *((admin.helpers.ACTION_CHECKBOX_NAME, rating.pk) for rating in queryset),
            ],
        )
