"""The email outbox: decided in a transaction, sent after commit, exactly once per key."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from smtplib import SMTPServerDisconnected

import pytest
import time_machine
from django.core.mail import EmailMessage
from django.core.mail.backends.base import BaseEmailBackend
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import OperationalError
from pytest_django import DjangoCaptureOnCommitCallbacks, Settings

from accounts import selectors, services, tasks
from accounts.models import ExpertProfile, ExpertStatus, OutboundEmail
from accounts.tests.factories import ExpertProfileFactory, UserFactory

pytestmark = pytest.mark.django_db

NOON = datetime(2030, 1, 15, 12, 0, tzinfo=UTC)


class RefusingEmailBackend(BaseEmailBackend):
    """A mail server that hangs up on every message."""

    def send_messages(self, email_messages: Sequence[EmailMessage]) -> int:
        raise SMTPServerDisconnected("Connection unexpectedly closed")


REFUSING_BACKEND = f"{__name__}.RefusingEmailBackend"


@pytest.fixture
def profile() -> ExpertProfile:
    return ExpertProfileFactory.create(
        user=UserFactory.create(email="ada@example.test", display_name="Ada Lovelace"),
        slug="ada-lovelace",
        status=ExpertStatus.APPROVED,
    )


def _queue(profile: ExpertProfile, key: str = "expert-decision:1") -> OutboundEmail:
    email, _created = services.email_queue(
        key=key,
        to=profile.user.email,
        subject="You are approved as a Parley expert",
        template="accounts/email/expert_approved.txt",
        context={"profile": profile},
    )
    return email


def _stored(key: str, **fields: object) -> OutboundEmail:
    """An outbox row written directly, to put it in one exact state."""
    return OutboundEmail.objects.create(
        key=key, to=f"{key}@example.test", subject=f"About {key}", body="Hello.", **fields
    )


# --- Queue and send after commit -----------------------------------------------------------


def test_queued_email_is_stored_in_the_transaction_and_sent_after_commit(
    profile: ExpertProfile,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            email = _queue(profile)
            # Decided, not sent: nothing may leave before the transaction commits.
            assert OutboundEmail.objects.filter(pk=email.pk, sent_at__isnull=True).exists()
            assert mailoutbox == []

    assert len(callbacks) == 1
    assert OutboundEmail.objects.count() == 1
    assert len(mailoutbox) == 1
    message = mailoutbox[0]
    assert message.to == ["ada@example.test"]
    assert message.subject == "You are approved as a Parley expert"
    assert "Hello Ada Lovelace," in message.body
    assert "/experts/ada-lovelace/" in message.body
    email.refresh_from_db()
    assert email.sent_at is not None
    assert email.attempts == 1
    assert email.leased_until is None
    assert email.last_error == ""


def test_queued_email_is_not_sent_when_the_transaction_rolls_back(
    profile: ExpertProfile,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            _queue(profile)
            raise RuntimeError("the decision failed after the email was queued")

    assert OutboundEmail.objects.count() == 0
    assert mailoutbox == []


def test_queuing_the_same_key_twice_stores_and_sends_one_email(
    profile: ExpertProfile,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            first = _queue(profile, "expert-decision:1")
            second = _queue(profile, "expert-decision:1")
    assert first.pk == second.pk
    assert len(callbacks) == 1
    assert OutboundEmail.objects.count() == 1
    assert len(mailoutbox) == 1


def test_queuing_a_key_already_sent_sends_nothing_more(
    profile: ExpertProfile,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        _queue(profile, "expert-decision:1")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        _queue(profile, "expert-decision:1")
    assert callbacks == []
    assert len(mailoutbox) == 1


def test_broker_down_at_commit_does_not_break_the_committed_write(
    profile: ExpertProfile,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sweep exists for "broker down at commit"; the write that queued the email has
    # already committed by then, so its caller must not get an error for it.
    def broker_down(*args: object, **kwargs: object) -> None:
        raise OperationalError("Error 111 connecting to redis:6379. Connection refused.")

    monkeypatch.setattr(tasks.email_send_task, "delay", broker_down)
    with django_capture_on_commit_callbacks(execute=True):
        email = _queue(profile)

    email.refresh_from_db()
    assert email.sent_at is None
    assert selectors.email_unsent_ids(older_than=timedelta(0)) == [email.pk]


# --- email_send ----------------------------------------------------------------------------


def test_sending_an_email_already_sent_returns_false_and_sends_nothing(
    mailoutbox: list[EmailMessage],
) -> None:
    email = _stored("welcome")
    assert services.email_send(email.pk) is True
    assert len(mailoutbox) == 1

    assert services.email_send(email.pk) is False
    assert len(mailoutbox) == 1
    email.refresh_from_db()
    assert email.attempts == 1


def test_email_leased_by_another_worker_is_not_sent_again(
    mailoutbox: list[EmailMessage],
) -> None:
    leased_until = timezone.now() + timedelta(minutes=3)
    email = _stored("welcome", leased_until=leased_until, attempts=1)

    assert services.email_send(email.pk) is False

    assert mailoutbox == []
    email.refresh_from_db()
    assert email.sent_at is None
    assert email.leased_until == leased_until
    assert email.attempts == 1


def test_email_whose_lease_expired_is_sent_by_the_next_worker(
    mailoutbox: list[EmailMessage],
) -> None:
    # The worker that leased it crashed before sending.
    email = _stored("welcome", leased_until=timezone.now() - timedelta(seconds=1), attempts=1)

    assert services.email_send(email.pk) is True

    assert len(mailoutbox) == 1
    email.refresh_from_db()
    assert email.sent_at is not None
    assert email.leased_until is None
    assert email.attempts == 2


def test_unknown_email_id_is_not_sent(mailoutbox: list[EmailMessage]) -> None:
    assert services.email_send(987654321) is False
    assert mailoutbox == []


def test_mail_server_failure_records_the_error_and_frees_the_email(
    settings: Settings,
) -> None:
    settings.EMAIL_BACKEND = REFUSING_BACKEND
    email = _stored("welcome")

    with pytest.raises(SMTPServerDisconnected, match="Connection unexpectedly closed"):
        services.email_send(email.pk)

    email.refresh_from_db()
    assert email.sent_at is None
    assert email.last_error == "Connection unexpectedly closed"
    assert email.leased_until is None
    assert email.attempts == 1


def test_email_that_failed_is_sent_on_the_next_try_and_the_error_is_cleared(
    settings: Settings, mailoutbox: list[EmailMessage]
) -> None:
    email = _stored("welcome")
    settings.EMAIL_BACKEND = REFUSING_BACKEND
    with pytest.raises(SMTPServerDisconnected):
        services.email_send(email.pk)

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    assert services.email_send(email.pk) is True

    assert len(mailoutbox) == 1
    email.refresh_from_db()
    assert email.sent_at is not None
    assert email.last_error == ""
    assert email.attempts == 2


# --- The sweep -----------------------------------------------------------------------------


def test_unsent_ids_are_old_unsent_unleased_emails_oldest_first() -> None:
    with time_machine.travel(NOON, tick=False) as traveller:
        old = _stored("old")
        traveller.shift(timedelta(seconds=10))
        lease_expired = _stored("lease-expired", leased_until=NOON + timedelta(minutes=1))
        _stored("sent", sent_at=NOON)
        _stored("leased", leased_until=NOON + timedelta(minutes=10))
        traveller.shift(timedelta(minutes=2))
        _stored("fresh")

        assert selectors.email_unsent_ids() == [old.pk, lease_expired.pk]


def test_unsent_ids_leave_an_email_younger_than_the_threshold() -> None:
    with time_machine.travel(NOON, tick=False) as traveller:
        email = _stored("welcome")
        traveller.shift(timedelta(seconds=59))
        assert selectors.email_unsent_ids() == []
        traveller.shift(timedelta(seconds=2))
        assert selectors.email_unsent_ids() == [email.pk]


def test_sweep_sends_emails_whose_task_was_lost(
    profile: ExpertProfile,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    mailoutbox: list[EmailMessage],
) -> None:
    with time_machine.travel(NOON, tick=False) as traveller:
        # Capture without running: the broker lost both tasks.
        with django_capture_on_commit_callbacks(execute=False) as lost:
            first = _queue(profile, "expert-decision:1")
            second = _queue(profile, "expert-decision:2")
        assert len(lost) == 2
        already_sent = _stored("already-sent", sent_at=NOON)
        traveller.shift(timedelta(minutes=5))

        assert tasks.email_sweep_unsent.delay().get() == 2

        assert sorted(message.subject for message in mailoutbox) == [
            "You are approved as a Parley expert",
            "You are approved as a Parley expert",
        ]
        assert set(
            OutboundEmail.objects.filter(sent_at__isnull=False).values_list("pk", flat=True)
        ) == {first.pk, second.pk, already_sent.pk}
        # Running the sweep again finds nothing left to do.
        assert tasks.email_sweep_unsent.delay().get() == 0
        assert len(mailoutbox) == 2
