from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.env import env_bool, env_choice, env_int, env_list
from config.tests.helpers import manage


def test_deploy_check_reports_nothing_with_debug_off_and_secrets_set() -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "WARNING",
        SECRET_KEY="k3Jx9-production-like-secret-Yv7Qw2Lm8Np4Rs6Tu1Vz0Ab5Cd3Ef7Gh9Ij2Kl4",
        ALLOWED_HOSTS="parley.example.com",
        DATABASE_URL="postgres://parley:secret@db.internal:5432/parley",
        REDIS_URL="redis://cache.internal:6379/0",
        STRIPE_SECRET_KEY="sk_live_placeholder_for_settings_only",
        TURN_URLS="turn:turn.example.com:3478",
        TURN_SECRET="coturn-shared-secret",
    )
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_debug_off_without_a_secret_key_refuses_to_start() -> None:
    result = manage("check")
    assert result.returncode != 0
    assert "SECRET_KEY must be set when DEBUG is off." in result.stderr


def test_embedded_defaults_need_no_environment_in_debug() -> None:
    result = manage("check", DEBUG="1")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DEBUG": "1", "PAYMENT_PROVIDER": "paypal"}, "PAYMENT_PROVIDER must be one of"),
        ({"DEBUG": "1", "PAYMENT_PROVIDER": "stripe"}, "PAYMENT_PROVIDER=stripe needs"),
        ({"DEBUG": "1", "TURN_URLS": "turn:x:3478"}, "TURN_URLS needs TURN_SECRET"),
        ({"DEBUG": "1", "CHANNEL_REDIS_URLS": "redis://a:6379/0"}, "CHANNEL_REDIS_URLS needs"),
    ],
)
def test_a_wrong_switch_names_itself(env: dict[str, str], message: str) -> None:
    result = manage("check", **env)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_pool_too_small_for_the_socket_threads_refuses_to_start() -> None:
    result = manage(
        "check",
        DEBUG="1",
        DATABASE_URL="postgres://parley:secret@db.internal:5432/parley",
        DATABASE_POOL_MAX="6",
        SOCKET_DATABASE_THREADS="4",
    )
    assert result.returncode != 0
    assert "DATABASE_POOL_MAX must be at least SOCKET_DATABASE_THREADS + 3 (7)" in result.stderr


def test_env_helpers_parse_and_name_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "Yes")
    monkeypatch.setenv("X_INT", "12")
    monkeypatch.setenv("X_LIST", "a, b,,c ,")
    assert env_bool("X_BOOL", default=False) is True
    assert env_int("X_INT", 0) == 12
    assert env_list("X_LIST") == ["a", "b", "c"]
    assert env_choice("X_MISSING", ("x", "y"), "y") == "y"
    monkeypatch.setenv("X_INT", "twelve")
    with pytest.raises(ImproperlyConfigured, match="X_INT must be an integer"):
        env_int("X_INT", 0)


def test_a_payment_command_lease_shorter_than_the_money_tasks_limit_refuses_to_start() -> None:
    result = manage("check", DEBUG="1", PAYMENT_COMMAND_LEASE_SECONDS="60")
    assert result.returncode != 0
    assert "PAYMENT_COMMAND_LEASE_SECONDS must be longer" in result.stderr
    assert manage("check", DEBUG="1", PAYMENT_COMMAND_LEASE_SECONDS="300").returncode == 0
