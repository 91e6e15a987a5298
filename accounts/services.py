"""Every state change in accounts: profiles, expert applications and the email outbox."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.sessions.models import Session
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.mail import BadHeaderError, EmailMultiAlternatives
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import F, Q
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.text import slugify

from accounts.errors import AccountsError, InvalidTransition
from accounts.models import (
    EXPERT_TRANSITIONS,
    Block,
    ExpertEvent,
    ExpertEventKind,
    ExpertProfile,
    ExpertStatus,
    OutboundEmail,
    User,
)
from accounts.sealing import SealBroken, seal, unseal
from accounts.sql import cursor_prepared

logger = logging.getLogger(__name__)

# Content errors: sending the same message again cannot succeed, so it is parked at once (an
# email rendered at sending whose row is gone cannot be rendered however often it is tried).
EMAIL_CONTENT_ERRORS = (
    BadHeaderError,
    ValueError,
    UnicodeError,
    SealBroken,
    ObjectDoesNotExist,
)
SUBJECT_MAX = OutboundEmail._meta.get_field("subject").max_length or 200
KEY_MAX = OutboundEmail._meta.get_field("key").max_length or 200


def user_profile_update(
    user: User, *, display_name: str, time_zone: str, booking_reminders: bool | None = None
) -> User:
    """Save a person's own settings. `booking_reminders` None leaves the preference as it is
    (signup asks only for the name and zone)."""
    fields = ["display_name", "time_zone"]
    user.display_name = display_name
    user.time_zone = time_zone
    if booking_reminders is not None and booking_reminders != user.booking_reminders:
        user.booking_reminders = booking_reminders
        fields.append("booking_reminders")
        logger.info(
            "User %s turned session reminders %s on their profile.",
            user.pk,
            "on" if booking_reminders else "off",
        )
    user.full_clean(exclude=["password"])
    user.save(update_fields=fields)
    return user


def user_reminders_off(user_id: int) -> bool:
    """Stop a person's session reminders (the unsubscribe link). Returns whether they were on;
    a second click changes nothing. Confirmations, changes and cancellations are still sent:
    they are about a booking, not reminders of it."""
    changed = User.objects.filter(pk=user_id, booking_reminders=True).update(
        booking_reminders=False
    )
    if changed:
        logger.info("User %s turned session reminders off with the unsubscribe link.", user_id)
    return bool(changed)


def expert_profile_submit(
    user: User,
    *,
    headline: str,
    bio: str,
    languages: list[str],
    currency: str,
    time_zone: str,
) -> ExpertProfile:
    """Apply to be an expert, resubmit after a rejection, or edit the profile.

    A first submission and a resubmission put the application in the review queue; an edit
    by a pending or approved expert keeps its status (approval is of the person, not the text).
    """
    fields = {
        "headline": headline,
        "bio": bio,
        "languages": languages,
        "currency": currency,
        "time_zone": time_zone,
    }
    with transaction.atomic():
        profile = ExpertProfile.objects.select_for_update().filter(user=user).first()
        if profile is None:
            profile = _expert_profile_create(user, fields)
            _expert_event(profile, ExpertEventKind.APPLIED, actor=user)
            return profile
        for name, value in fields.items():
            setattr(profile, name, value)
        kind = ExpertEventKind.UPDATED
        if profile.status == ExpertStatus.REJECTED:
            # Back into the queue: the earlier decision no longer describes this profile.
            _expert_status_check(profile.status, ExpertStatus.PENDING)
            profile.status = ExpertStatus.PENDING
            profile.decision_reason = ""
            profile.decided_by = None
            profile.decided_at = None
            profile.submitted_at = timezone.now()
            kind = ExpertEventKind.RESUBMITTED
        _expert_profile_validate(profile)
        profile.save()
        _expert_event(profile, kind, actor=user)
        return profile


def _expert_profile_create(user: User, fields: dict[str, Any]) -> ExpertProfile:
    base = slugify(user.display_name)[:80] or "expert"
    slug = base
    for _attempt in range(5):
        if not ExpertProfile.objects.filter(slug=slug).exists():
            break
        slug = f"{base}-{secrets.token_hex(3)}"
    profile = ExpertProfile(user=user, slug=slug, **fields)
    _expert_profile_validate(profile)
    try:
        with transaction.atomic():
            profile.save()
    except IntegrityError:
        raise InvalidTransition(
            "Your application was submitted twice at the same moment; reload the page to see it."
        ) from None
    return profile


def _expert_profile_validate(profile: ExpertProfile) -> None:
    try:
        profile.full_clean()
    except ValidationError as error:
        raise InvalidTransition(" ".join(error.messages)) from None


def expert_approve(profile_id: int, *, actor: User) -> ExpertProfile:
    with transaction.atomic():
        profile = _expert_decide(profile_id, ExpertStatus.APPROVED, actor=actor, reason="")
        event = _expert_event(profile, ExpertEventKind.APPROVED, actor=actor)
        email_queue(
            key=f"expert-decision:{event.pk}",
            to=profile.user.email,
            subject="You are approved as a Parley expert",
            template="accounts/email/expert_approved.txt",
            context={"profile": profile},
        )
    return profile


def expert_reject(profile_id: int, *, actor: User, reason: str) -> ExpertProfile:
    reason = reason.strip()
    if not reason:
        raise InvalidTransition("Give a reason: the applicant sees it and needs it to improve.")
    with transaction.atomic():
        profile = _expert_decide(profile_id, ExpertStatus.REJECTED, actor=actor, reason=reason)
        event = _expert_event(profile, ExpertEventKind.REJECTED, actor=actor, reason=reason)
        email_queue(
            key=f"expert-decision:{event.pk}",
            to=profile.user.email,
            subject="About your Parley expert application",
            template="accounts/email/expert_rejected.txt",
            context={"profile": profile},
        )
    return profile


def _expert_decide(profile_id: int, target: str, *, actor: User, reason: str) -> ExpertProfile:
    if not (actor.is_active and actor.is_staff):
        raise InvalidTransition("Only Parley staff decide expert applications.")
    applicant_id = ExpertProfile.objects.values_list("user_id", flat=True).get(pk=profile_id)
    if applicant_id == actor.pk:
        raise InvalidTransition("You cannot decide your own application; ask another staff member.")
    sources = [source for source, targets in EXPERT_TRANSITIONS.items() if target in targets]
    # Conditional UPDATE: of two staff deciding at once, exactly one wins; the other is told.
    changed = ExpertProfile.objects.filter(pk=profile_id, status__in=sources).update(
        status=target, decision_reason=reason, decided_by=actor, decided_at=timezone.now()
    )
    profile = ExpertProfile.objects.select_related("user").get(pk=profile_id)
    if changed != 1:
        _expert_status_check(profile.status, target)
    return profile


def _expert_status_check(current: str, target: str) -> None:
    if target not in EXPERT_TRANSITIONS[current]:
        raise InvalidTransition(
            f"This application is already “{ExpertStatus(current).label}”; "
            f"it cannot become “{ExpertStatus(target).label}”."
        )


def _expert_event(
    profile: ExpertProfile, kind: str, *, actor: User | None, reason: str = ""
) -> ExpertEvent:
    return ExpertEvent.objects.create(profile=profile, kind=kind, actor=actor, reason=reason)


def email_queue(
    *,
    key: str,
    to: str,
    subject: str,
    template: str,
    context: dict[str, Any],
    ics: str = "",
    ics_method: str = "",
    headers: dict[str, str] | None = None,
) -> tuple[OutboundEmail, bool]:
    """Render an email and queue it (see `email_queue_rendered`).

    `template` is the text version, ``<app>/email/<name>.txt``; its sibling
    ``<app>/email/<name>.html`` (extending ``email/base.html``) is the HTML alternative. Both
    get the same context, plus ``site_url``.
    """
    body, html = email_render(template, context)
    return email_queue_rendered(
        key=key,
        to=to,
        subject=subject,
        body=body,
        html=html,
        ics=ics,
        ics_method=ics_method,
        headers=headers,
    )


def email_render(template: str, context: dict[str, Any]) -> tuple[str, str]:
    """The text and HTML bodies of an email from its ``.txt`` template and the sibling
    ``.html``. An email whose ``.html`` is not written yet goes as text only (logged, and
    accounts/tests/test_email_html.py fails on the missing template)."""
    if not template.endswith(".txt"):
        raise ValueError(f"An email's template is its text version, ending in .txt: {template}")
    full = {**context, "site_url": settings.SITE_URL}
    body: str = render_to_string(template, full)
    html: str
    html_template = template.removesuffix(".txt") + ".html"
    try:
        html = render_to_string(html_template, full)
    except TemplateDoesNotExist:
        logger.warning("Email template %s has no HTML version; sent as text only.", template)
        html = ""
    return body, html


def email_queue_rendered(
    *,
    key: str,
    to: str,
    subject: str,
    body: str,
    html: str = "",
    ics: str = "",
    ics_method: str = "",
    headers: dict[str, str] | None = None,
    secret: bool = False,
) -> tuple[OutboundEmail, bool]:
    """Record an email in the caller's transaction; it is sent after commit, once per key.

    The caller's transaction is a payment's authorization or a room's close: nothing about the
    email's content may fail it. The subject is made one line that fits its column, the key is
    shortened to fit (keeping it unique) and `to` and header values lose their line breaks; an
    address that still cannot be sent to parks the email later, at sending, without touching
    the caller's work.
    `html`: the HTML alternative to the text `body` ("" for text only).
    `headers`: extra headers (e.g. List-Unsubscribe), stored with the email.
    `secret`: the body holds a sign-in secret, so both bodies are sealed (accounts/sealing.py).

    Returns the email and whether this call created it (False: that key was queued before).
    """
    email, created = OutboundEmail.objects.get_or_create(
        key=_email_key_fit(key),
        defaults={
            "to": _header_safe(to)[:254],
            "subject": email_subject_fit(subject),
            "body": seal(body) if secret else body,
            "html": seal(html) if secret and html else html,
            "headers": {
                _header_safe(name): _header_safe(value) for name, value in (headers or {}).items()
            },
            "sealed": secret,
            "ics": ics,
            "ics_method": _header_safe(ics_method)[:16],
        },
    )
    if created:
        # robust: the write has committed; a broker that is down must not turn it into an
        # error for the caller. The unsent-email sweep sends it later.
        transaction.on_commit(lambda: _emails_dispatch([email.pk]), robust=True)
    return email, created


@dataclass(frozen=True)
class EmailContent:
    """What an email says, made by its renderer when it is sent."""

    body: str
    html: str = ""
    ics: str = ""
    ics_method: str = ""


EmailRenderer = Callable[[dict[str, Any]], EmailContent]

# Renderers by name. The apps that queue emails rendered at sending register theirs when they
# load (accounts is the lowest layer: it names them, it cannot import them).
_EMAIL_RENDERERS: dict[str, EmailRenderer] = {}


def email_renderer(name: str) -> Callable[[EmailRenderer], EmailRenderer]:
    """Register the function that renders the emails queued under `name` (a decorator)."""

    def register(renderer: EmailRenderer) -> EmailRenderer:
        if _EMAIL_RENDERERS.setdefault(name, renderer) is not renderer:
            raise ValueError(f"Two email renderers are named {name!r}.")
        return renderer

    return register


@dataclass(frozen=True)
class EmailToRender:
    """An email decided now and rendered when it is sent: its key, who it goes to, its subject
    (a column: admin lists it before sending) and the renderer with its arguments (ids, plain
    values: JSON)."""

    key: str
    to: str
    subject: str
    renderer: str
    args: dict[str, Any]
    headers: dict[str, str] | None = None


def emails_queue_to_render(emails: list[EmailToRender]) -> list[int]:
    """Record emails in the caller's transaction, to be rendered and sent after commit, once
    per key; returns the ids of those this call created (a key queued before is left alone).

    For emails decided on a hot path (a payment's authorization confirms a booking): one
    INSERT for all of them, no template or invitation rendered in the caller's transaction,
    and nothing about their content can fail it (as `email_queue_rendered`).
    """
    if not emails:
        return []
    for email in emails:
        if email.renderer not in _EMAIL_RENDERERS:
            # A programming error, caught by the tests that queue the email.
            raise ValueError(f"No email renderer is named {email.renderer!r}.")
    rows = [
        OutboundEmail(
            key=_email_key_fit(email.key),
            to=_header_safe(email.to)[:254],
            subject=email_subject_fit(email.subject),
            headers={
                _header_safe(name): _header_safe(value)
                for name, value in (email.headers or {}).items()
            },
            renderer=email.renderer,
            renderer_args=email.args,
        )
        for email in emails
    ]
    # `get_or_create` per email costs a read, a savepoint and an insert each; ON CONFLICT
    # DO NOTHING ... RETURNING says in one statement which keys are new. Every column is
    # written from the model (its defaults included), so a column added later is not missed.
    fields = [field for field in OutboundEmail._meta.concrete_fields if not field.primary_key]
    quote = connection.ops.quote_name
    row_sql = "(" + ", ".join(["%s"] * len(fields)) + ")"
    sql = (
        f"INSERT INTO {quote(OutboundEmail._meta.db_table)}"  # noqa: S608 - names from the model
        f" ({', '.join(quote(field.column) for field in fields)})"
        f" VALUES {', '.join([row_sql] * len(rows))}"
        f" ON CONFLICT ({quote('key')}) DO NOTHING"
        f" RETURNING {quote(OutboundEmail._meta.pk.column)}"
    )
    # The connection itself: each lookup through the `connection` proxy costs a thread-local.
    database = connections[DEFAULT_DB_ALIAS]
    params = [
        field.get_db_prep_save(field.pre_save(row, add=True), database)
        for row in rows
        for field in fields
    ]
    with cursor_prepared() as cursor:
        cursor.execute(sql, params)
        created = [int(pk) for (pk,) in cursor.fetchall()]
    if created:
        # One message to the broker for all of them. robust: as in `email_queue_rendered`,
        # the sweep sends what a broker that is down misses.
        transaction.on_commit(lambda: _emails_dispatch(created), robust=True)
    return created


# Emails held by `emails_batched` in this thread, in the order their transactions committed.
_held = threading.local()


def _emails_dispatch(email_ids: list[int]) -> None:
    held = getattr(_held, "emails", None)
    if held is not None:
        held.extend(email_ids)
        return
    from accounts.tasks import email_send_many_task, email_send_task

    if len(email_ids) == 1:
        email_send_task.delay(email_ids[0])
    else:
        email_send_many_task.delay(email_ids)


@contextmanager
def emails_batched() -> Iterator[None]:
    """Emails queued (and committed) inside the block go to the workers in one message when it
    ends, instead of one each: a worker capturing a batch of payments queues a receipt per
    capture, each in its own transaction. Each email is still sent only after its transaction
    committed, at most the block's length later, and the unsent-email sweep sends any the
    message loses. Nested blocks send with the outermost."""
    if getattr(_held, "emails", None) is not None:
        yield
        return
    _held.emails = []
    try:
        yield
    finally:
        emails, _held.emails = _held.emails, None
        if emails:
            try:
                _emails_dispatch(emails)
            except Exception:
                # As a single dispatch after commit (robust): the sweep sends them.
                logger.exception("Handing %s emails to the workers failed.", len(emails))


def _email_content(email: OutboundEmail) -> EmailContent:
    """What the email says: rendered now if it was queued to be rendered at sending (a
    renderer that no longer exists is a content error: the email is parked)."""
    if email.renderer and not email.body:
        renderer = _EMAIL_RENDERERS.get(email.renderer)
        if renderer is None:
            raise ValueError(f"No email renderer is named {email.renderer!r}.")
        return renderer(dict(email.renderer_args))
    body = unseal(email.body) if email.sealed else email.body
    html = unseal(email.html) if email.sealed and email.html else email.html
    return EmailContent(body=body, html=html, ics=email.ics, ics_method=email.ics_method)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _header_safe(text: str) -> str:
    """One line: control characters (CR, LF, tab, NUL…) become a space, runs of space one."""
    return " ".join(_CONTROL.sub(" ", text).split())


def email_subject_fit(subject: str) -> str:
    """A subject that is one header line and fits the outbox column, cut with an ellipsis."""
    line = _header_safe(subject)
    if len(line) <= SUBJECT_MAX:
        return line
    return line[: SUBJECT_MAX - 1].rstrip() + "…"


def _email_key_fit(key: str) -> str:
    if len(key) <= KEY_MAX:
        return key
    # Still one key per reason: the cut-off tail is kept as its hash.
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: KEY_MAX - len(digest) - 1]}#{digest}"


def email_send(email_id: int) -> bool:
    """Send one queued email. Returns False when it is already sent, parked, parked now, or
    another worker has it.

    A content error (a header with a line break in a row written before the outbox cleaned
    them, a sealed body that cannot be opened) parks the email at once: trying again cannot
    help. Any other failure is raised for the task's retry (then the minute sweep's), and
    parks the email once it has been tried EMAIL_MAX_ATTEMPTS times over EMAIL_GIVE_UP_HOURS.
    """
    now = timezone.now()
    leased = (
        OutboundEmail.objects.filter(pk=email_id, sent_at__isnull=True, parked_at__isnull=True)
        .filter(Q(leased_until__isnull=True) | Q(leased_until__lt=now))
        .update(
            leased_until=now + timedelta(seconds=settings.EMAIL_LEASE_SECONDS),
            attempts=F("attempts") + 1,
        )
    )
    if leased != 1:
        return False
    email = OutboundEmail.objects.get(pk=email_id)
    try:
        content = _email_content(email)
        message = EmailMultiAlternatives(
            email.subject, content.body, to=[email.to], headers=dict(email.headers)
        )
        if content.html:
            message.attach_alternative(content.html, "text/html")
        if content.ics:
            method = content.ics_method or "PUBLISH"
            message.attach("invite.ics", content.ics, f"text/calendar; method={method}")
        message.send()
    except EMAIL_CONTENT_ERRORS as exc:
        _email_park(email, f"Cannot be sent as it is: {type(exc).__name__}: {exc}")
        return False
    except Exception as exc:
        error = str(exc) or type(exc).__name__
        failing_for = now - email.created_at
        if email.attempts >= settings.EMAIL_MAX_ATTEMPTS and failing_for >= timedelta(
            hours=settings.EMAIL_GIVE_UP_HOURS
        ):
            _email_park(email, f"Failed {email.attempts} times; the last time: {error}")
            return False
        OutboundEmail.objects.filter(pk=email_id).update(leased_until=None, last_error=error)
        raise
    sent: dict[str, Any] = {"sent_at": timezone.now(), "leased_until": None, "last_error": ""}
    if email.renderer and not email.body:
        # The row keeps what was sent, as for an email rendered when it was queued.
        sent.update(
            body=content.body, html=content.html, ics=content.ics, ics_method=content.ics_method
        )
    if email.sealed:
        # Delivered: the link lives in the person's mailbox now, and nowhere here.
        sent["body"] = ""
        sent["html"] = ""
    OutboundEmail.objects.filter(pk=email_id).update(**sent)
    return True


def _email_park(email: OutboundEmail, reason: str) -> None:
    logger.warning("Email %s (%s) parked: %s", email.pk, email.key, reason)
    OutboundEmail.objects.filter(pk=email.pk, sent_at__isnull=True).update(
        parked_at=timezone.now(), leased_until=None, last_error=reason[:2000]
    )


def email_unpark(email_ids: list[int], *, actor: User) -> int:
    """Staff send parked emails again (after fixing the mail server, or the address): each
    gets a fresh set of attempts. Returns how many were queued."""
    if not (actor.is_active and actor.is_staff):
        raise AccountsError("Only Parley staff can send parked emails again.")
    with transaction.atomic():
        ids = list(
            OutboundEmail.objects.select_for_update()
            .filter(pk__in=email_ids, parked_at__isnull=False, sent_at__isnull=True)
            .values_list("pk", flat=True)
        )
        OutboundEmail.objects.filter(pk__in=ids).update(
            parked_at=None,
            attempts=0,
            leased_until=None,
            unparked_by=actor,
            unparked_at=timezone.now(),
        )
        logger.info("Staff %s sent parked emails %s again.", actor.pk, ids)
        from accounts.tasks import email_send_task

        for email_id in ids:
            transaction.on_commit(
                lambda email_id=email_id: email_send_task.delay(email_id),  # type: ignore[misc]
                robust=True,
            )
    return len(ids)


def sessions_clear_expired() -> int:
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted


def block_create(blocker: User, blocked_id: int, *, reason: str = "") -> tuple[Block, bool]:
    """`blocker` will not meet `blocked_id` again: no bookings, no calls, either way round.
    Returns the block and whether it is new (blocking twice changes nothing)."""
    if blocker.pk == blocked_id:
        raise AccountsError("You cannot block yourself.")
    if not User.objects.filter(pk=blocked_id).exists():
        raise AccountsError("There is no such person to block.")
    try:
        with transaction.atomic():
            return Block.objects.get_or_create(
                blocker=blocker, blocked_id=blocked_id, defaults={"reason": reason.strip()}
            )
    except IntegrityError:
        # The same block, made at the same moment from another tab.
        return Block.objects.get(blocker=blocker, blocked_id=blocked_id), False


def block_remove(blocker: User, blocked_id: int) -> bool:
    """Lift one's own block. Returns whether there was one."""
    deleted, _ = Block.objects.filter(blocker=blocker, blocked_id=blocked_id).delete()
    return bool(deleted)


def user_ban(user_id: int, *, actor: User) -> User:
    """Suspend an account: it cannot sign in or book, and its signed-in browsers are signed out
    (its open call sockets are closed by the caller, which knows the rooms). Only a superuser
    bans staff."""
    if actor.pk == user_id:
        raise AccountsError("You cannot ban your own account.")
    return _user_active_set(user_id, active=False, actor=actor)


def user_unban(user_id: int, *, actor: User) -> User:
    return _user_active_set(user_id, active=True, actor=actor)


def _user_active_set(user_id: int, *, active: bool, actor: User) -> User:
    act = "lift the ban of" if active else "ban"
    if not (actor.is_active and actor.is_staff):
        raise AccountsError(f"Only Parley staff can {act} an account.")
    with transaction.atomic():
        user = User.objects.select_for_update().get(pk=user_id)
        if (user.is_staff or user.is_superuser) and not actor.is_superuser:
            raise AccountsError(f"Only a superuser can {act} a staff account; ask one.")
        if user.is_active == active:
            state = "not banned" if active else "already banned"
            raise AccountsError(f"{user.display_name} is {state}.")
        # An inactive user is signed out on their next request (the auth backend refuses
        # inactive accounts when it loads the session's user), so no session outlives a ban.
        User.objects.filter(pk=user.pk).update(is_active=active)
        user.is_active = active
    return user
