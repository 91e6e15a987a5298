from __future__ import annotations

from typing import Any

import factory
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

from accounts.models import ExpertProfile, ExpertStatus, User

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"person{n}@example.test")
    display_name = factory.Sequence(lambda n: f"Person {n}")
    time_zone = "Europe/Berlin"
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def verified(user: User, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        """Pass verified=False for an account whose email is not confirmed yet."""
        if create:
            user.save()
            EmailAddress.objects.create(
                user=user, email=user.email, primary=True, verified=extracted is not False
            )


class StaffFactory(UserFactory):
    is_staff = True
    is_superuser = True


def totp_enable(user: User) -> str:
    """Give the user a TOTP authenticator; returns its secret."""
    secret = str(generate_totp_secret())
    TOTP.activate(user, secret)
    assert Authenticator.objects.filter(user=user).exists()
    return secret


class ExpertProfileFactory(factory.django.DjangoModelFactory[ExpertProfile]):
    class Meta:
        model = ExpertProfile

    user = factory.SubFactory(UserFactory)
    slug = factory.Sequence(lambda n: f"expert-{n}")
    headline = "Kubernetes cost reviews"
    bio = "Ten years running clusters for companies of every size; I find what you overpay."
    languages = factory.LazyFunction(lambda: ["en"])
    currency = "EUR"
    time_zone = "Europe/Berlin"
    status = ExpertStatus.PENDING
