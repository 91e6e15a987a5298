"""Accounts' admin: users, expert applications, the email outbox, addresses and second
factors.

One admin per model, extended through a hook
--------------------------------------------
User and ExpertProfile each have exactly one admin, declared here. An app above accounts that
has something to add to them (moderation adds the ban actions and the expert's no-shows) does
not unregister and replace them: it calls `extend` on the admin class from its own admin module,

    UserAdmin.extend(AdminExtension(app="moderation", actions=(ban, unban), ...))

which Django's admin autodiscovery imports at start-up. An extension may add:

- `columns`: callables decorated with `@admin.display`, appended to the change list;
- `panels`: read-only items on the change page, either the name of a model field that the
  extending app makes read-only (its changes go through that app's services) or an
  `@admin.display` callable taking the object; ones a fixed fieldset does not show are put in
  a section titled after the extension;
- `actions`: admin action functions `(model_admin, request, queryset)`, offered only to staff
  holding the permissions named in their `@admin.action(permissions=...)`;
- `annotate`: a function that adds to the admin's queryset what its columns read or sort by.

The admins read their extensions on every request, so the order in which apps load does not
matter, and accounts never imports the apps that extend it (the apps are layers, STYLE.md).
Extending twice under one `app` replaces that app's extension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

# Imported first so their registrations exist to be replaced below, whatever the app order.
import allauth.account.admin
import allauth.mfa.admin  # noqa: F401
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.options import IS_POPUP_VAR
from django.contrib.admin.utils import flatten_fieldsets
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from accounts import services
from accounts.errors import AccountsError
from accounts.forms import RejectionForm
from accounts.models import ExpertEvent, ExpertProfile, ExpertStatus, OutboundEmail, User


class UserCreationForm(AdminUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "display_name", "time_zone")


class UserEditForm(UserChangeForm[User]):
    class Meta:
        model = User
        fields = "__all__"


@dataclass(frozen=True)
class AdminExtension:
    """What an app above accounts adds to one of the admins here (see the module docstring).
    `title` names the section its panels get on a page with fixed fieldsets."""

    app: str
    title: str = ""
    columns: Sequence[Callable[[Any], Any]] = ()
    panels: Sequence[str | Callable[[Any], Any]] = ()
    actions: Sequence[Callable[..., Any]] = ()
    annotate: Callable[[QuerySet[Any]], QuerySet[Any]] | None = None


class ExtensibleAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """A model admin that the apps above accounts extend with `extend`, never replace. Each
    subclass keeps its own extensions."""

    extensions: ClassVar[dict[str, AdminExtension]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.extensions = {}

    @classmethod
    def extend(cls, extension: AdminExtension) -> None:
        cls.extensions[extension.app] = extension

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        queryset = super().get_queryset(request)
        for extension in self.extensions.values():
            if extension.annotate is not None:
                queryset = extension.annotate(queryset)
        return queryset

    def get_list_display(self, request: HttpRequest) -> Any:
        added = [column for ext in self.extensions.values() for column in ext.columns]
        return (*super().get_list_display(request), *added)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        added = [panel for ext in self.extensions.values() for panel in ext.panels]
        return (*super().get_readonly_fields(request, obj), *added)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = super().get_fieldsets(request, obj)
        if obj is None or not self.fieldsets:
            # Without fixed fieldsets the page lists every read-only item, the panels too;
            # a page that adds a record shows none.
            return fieldsets
        shown = set(flatten_fieldsets(fieldsets))
        for extension in self.extensions.values():
            missing = [panel for panel in extension.panels if panel not in shown]
            if missing:
                title = extension.title or extension.app.capitalize()
                section: Any = (title, {"fields": missing})
                fieldsets = [*fieldsets, section]
        return fieldsets

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        if self.actions is None or IS_POPUP_VAR in request.GET:
            return actions
        for extension in self.extensions.values():
            for action in extension.actions:
                # As Django does for an admin's own actions: offered when the user holds any
                # of the permissions the action names.
                needed = getattr(action, "allowed_permissions", ())
                if needed and not any(
                    getattr(self, f"has_{name}_permission")(request) for name in needed
                ):
                    continue
                name = action.__name__
                description = getattr(action, "short_description", name.replace("_", " "))
                actions[name] = (action, name, description)
        return actions


@admin.register(User)
class UserAdmin(ExtensibleAdmin, DjangoUserAdmin):  # type: ignore[type-arg]
    add_form = UserCreationForm
    form = UserEditForm
    ordering = ("-date_joined",)
    list_display = ("email", "display_name", "is_staff", "is_active", "date_joined")
    list_filter = ("is_staff", "is_superuser", "is_active")
    search_fields = ("email", "display_name")
    # The address is changed by its owner through email management (which re-verifies it);
    # editing it here would leave the old verified address standing in for the new one.
    readonly_fields: ClassVar[tuple[str, ...]] = ("email", "date_joined", "last_login")
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Profile", {"fields": ("display_name", "time_zone")}),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "display_name", "time_zone", "password1", "password2"),
            },
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Who is staff, and with which powers, is a superuser's decision: otherwise a staff
        # member who may change users could make themselves a superuser, or take a colleague's
        # staff status away (and then ban them).
        fields = tuple(super().get_readonly_fields(request, obj))
        if not request.user.is_superuser:
            fields += ("is_staff", "is_superuser", "groups", "user_permissions")
        return fields

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # An account holds bookings, payments and audit rows that must outlive it; it is
        # banned, never deleted.
        return False

    def user_change_password(
        self, request: HttpRequest, id: str, form_url: str = ""
    ) -> HttpResponse:
        # Setting someone's password is taking over their account: a superuser's act only.
        # Everyone else resets their own by email.
        if not request.user.is_superuser:
            raise PermissionDenied("Only a superuser can set another account's password.")
        return super().user_change_password(request, id, form_url)


class ReadOnlyInline(admin.TabularInline):  # type: ignore[type-arg]
    """Rows of a log shown inside their parent's page: nothing added, changed or deleted."""

    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ExpertEventInline(ReadOnlyInline):
    model = ExpertEvent
    fields = ("created_at", "kind", "actor", "reason")
    readonly_fields = fields


@admin.register(ExpertProfile)
class ExpertProfileAdmin(ExtensibleAdmin):
    list_display: tuple[str, ...] = (
        "user",
        "headline",
        "status",
        "submitted_at",
        "decided_at",
    )
    list_filter = ("status", "currency")
    search_fields = ("user__email", "user__display_name", "headline")
    list_select_related = ("user",)
    ordering = ("status", "submitted_at")
    actions = ["approve", "reject"]
    inlines = [ExpertEventInline]
    # The application is the applicant's text; staff decide on it through the actions, which
    # go through the services (status is never edited as a field).
    readonly_fields: ClassVar[tuple[str, ...]] = (
        "user",
        "slug",
        "headline",
        "bio",
        "languages",
        "currency",
        "time_zone",
        "status",
        "decision_reason",
        "decided_by",
        "decided_at",
        "submitted_at",
        "updated_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Approve selected applications", permissions=["change"])
    def approve(self, request: HttpRequest, queryset: QuerySet[ExpertProfile]) -> None:
        assert isinstance(request.user, User)  # noqa: S101
        approved, refused = 0, []
        for profile in queryset:
            try:
                services.expert_approve(profile.pk, actor=request.user)
                approved += 1
            except AccountsError as error:
                refused.append(f"{profile.user.display_name}: {error}")
        if approved:
            self.message_user(request, f"Approved {approved} application(s).", messages.SUCCESS)
        for line in refused:
            self.message_user(request, line, messages.ERROR)

    @admin.action(
        description="Reject selected applications (with a reason)", permissions=["change"]
    )
    def reject(
        self, request: HttpRequest, queryset: QuerySet[ExpertProfile]
    ) -> HttpResponse | None:
        assert isinstance(request.user, User)  # noqa: S101
        pending = queryset.filter(status=ExpertStatus.PENDING)
        form = RejectionForm(request.POST if "confirm" in request.POST else None)
        if form.is_bound and form.is_valid():
            rejected, refused = 0, []
            for profile in queryset:
                try:
                    services.expert_reject(
                        profile.pk, actor=request.user, reason=form.cleaned_data["reason"]
                    )
                    rejected += 1
                except AccountsError as error:
                    refused.append(f"{profile.user.display_name}: {error}")
            if rejected:
                self.message_user(request, f"Rejected {rejected} application(s).", messages.SUCCESS)
            for line in refused:
                self.message_user(request, line, messages.ERROR)
            return None
        # First visit, or a reason that did not validate: ask (again) on an intermediate page.
        context = {
            **self.admin_site.each_context(request),
            "title": "Reject applications",
            "opts": self.model._meta,
            "form": form,
            "profiles": queryset.select_related("user"),
            "pending_count": pending.count(),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/accounts/expertprofile/reject.html", context)


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Records only services write (outbox, payments, webhooks): staff read them, never edit
    them. The apps above use it too."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EmailStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("pending", "Pending"), ("parked", "Parked"), ("sent", "Sent")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "pending":
            return queryset.filter(sent_at__isnull=True, parked_at__isnull=True)
        if self.value() == "parked":
            return queryset.filter(sent_at__isnull=True, parked_at__isnull=False)
        if self.value() == "sent":
            return queryset.filter(sent_at__isnull=False)
        return queryset


@admin.register(OutboundEmail)
class OutboundEmailAdmin(ReadOnlyAdmin):
    list_display = ("subject", "to", "status", "created_at", "sent_at", "attempts", "last_error")
    list_filter = (EmailStatusFilter, "sent_at", "parked_at")
    search_fields = ("to", "subject", "key")
    actions = ["send_again"]
    # The body is shown through `body_shown`: a sealed one (a sign-in link) never is. The HTML
    # alternative says the same as the text body, and is sealed with it: not shown.
    readonly_fields = [
        *(field.name for field in OutboundEmail._meta.fields if field.name not in ("body", "html")),
        "body_shown",
    ]
    exclude = ("body", "html")

    @admin.display(description="status")
    def status(self, email: OutboundEmail) -> str:
        if email.sent_at is not None:
            return "sent"
        return "parked" if email.parked_at is not None else "pending"

    @admin.display(description="body")
    def body_shown(self, email: OutboundEmail) -> str:
        if email.sealed:
            return "(Hidden: it carries a sign-in link or code. It is emptied once sent.)"
        if email.renderer and not email.body:
            return "(Not written yet: it is rendered when it is sent, and kept here after.)"
        return email.body

    @admin.action(description="Send selected parked emails again")
    def send_again(self, request: HttpRequest, queryset: QuerySet[OutboundEmail]) -> None:
        assert isinstance(request.user, User)  # noqa: S101
        try:
            count = services.email_unpark(
                list(queryset.values_list("pk", flat=True)), actor=request.user
            )
        except AccountsError as error:
            self.message_user(request, str(error), messages.ERROR)
            return
        self.message_user(request, f"Queued {count} parked email(s) again.", messages.SUCCESS)


# Addresses change through their owner's email management, which verifies them, and second
# factors through the owner's security page: staff can look, not alter. A second factor's
# secret is never shown.
admin.site.unregister(EmailAddress)
admin.site.unregister(Authenticator)


@admin.register(EmailAddress)
class EmailAddressAdmin(ReadOnlyAdmin):
    list_display = ("email", "user", "primary", "verified")
    list_filter = ("primary", "verified")
    search_fields = ("email", "user__email", "user__display_name")
    list_select_related = ("user",)
    fields = readonly_fields = ("email", "user", "primary", "verified")


@admin.register(Authenticator)
class AuthenticatorAdmin(ReadOnlyAdmin):
    list_display = ("user", "type", "created_at", "last_used_at")
    list_filter = ("type",)
    search_fields = ("user__email",)
    list_select_related = ("user",)
    fields = readonly_fields = ("user", "type", "created_at", "last_used_at")
