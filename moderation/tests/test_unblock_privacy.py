"""Unblocking names only people one blocked (issue 16, security, low): posting to the unblock
URL with any user's id must not tell the poster that user's name, nor whether the id exists."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import Block
from accounts.tests.factories import UserFactory
from moderation import services

pytestmark = pytest.mark.django_db


def _messages_after(client: Client, user_id: int) -> str:
    response = client.post(reverse("moderation:unblock", args=[user_id]), follow=True)
    assert response.status_code == 200
    return " ".join(str(message) for message in response.context["messages"])


def test_unblocking_someone_not_blocked_reveals_nothing_about_them() -> None:
    prober = UserFactory.create()
    stranger = UserFactory.create(display_name="Secret Stranger")
    client = Client()
    client.force_login(prober)

    about_a_person = _messages_after(client, stranger.pk)
    about_nobody = _messages_after(client, 987_654_321)

    assert "Secret Stranger" not in about_a_person
    # A real id and a made-up one get the same answer: the id's existence is not told either.
    assert about_a_person == about_nobody != ""


def test_someone_blocked_by_another_person_is_not_named_to_me() -> None:
    prober, blocker = UserFactory.create(), UserFactory.create()
    stranger = UserFactory.create(display_name="Secret Stranger")
    services.block_create(blocker, stranger.pk)
    client = Client()
    client.force_login(prober)

    assert "Secret Stranger" not in _messages_after(client, stranger.pk)
    assert Block.objects.filter(blocker=blocker, blocked=stranger).exists()


def test_unblocking_someone_i_blocked_names_them() -> None:
    me = UserFactory.create()
    them = UserFactory.create(display_name="Blocked Person")
    services.block_create(me, them.pk)
    client = Client()
    client.force_login(me)

    assert _messages_after(client, them.pk) == "You unblocked Blocked Person."
    assert not Block.objects.exists()
