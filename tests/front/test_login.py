"""Log in: a right password logs in; failures are counted per username and per address, and past
the limit even the right password is refused until the window ends."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from django.test import Client

from tests.conftest import REDIS_TEST_URL, ROOT, _redis_ok, _require

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db


def _login(client, username="alice", password=PASSWORD, address="10.0.0.1"):
    return client.post("/accounts/login/", {"username": username, "password": password}, REMOTE_ADDR=address)


def test_right_password_logs_in_and_goes_to_runs(client, alice):
    answer = _login(client)
    assert answer.status_code == 302 and answer["Location"] == "/runs/"
    assert client.get("/runs/").status_code == 200


def test_wrong_password_is_refused(client, alice):
    answer = _login(client, password="wrong")
    assert answer.status_code == 200 and "correct username and password" in answer.content.decode()
    assert client.get("/runs/").status_code == 302


def test_next_is_followed(client, alice):
    answer = client.post("/accounts/login/?next=/checkpoints/", {"username": "alice", "password": PASSWORD})
    assert answer["Location"] == "/checkpoints/"


def test_too_many_failures_for_a_username_lock_it(client, alice, settings):
    settings.LORASMITH_LOGIN_FAILURES_ALLOWED = 3
    for i in range(3):
        _login(client, password="wrong", address=f"10.0.0.{i}")
    answer = _login(client, address="10.0.0.99")  # right password, fresh address
    assert answer.status_code == 200 and "Too many failed attempts" in answer.content.decode()


def test_too_many_failures_from_an_address_lock_it(client, alice, bob, settings):
    settings.LORASMITH_LOGIN_FAILURES_ALLOWED = 3
    for name in ("x", "y", "z"):
        _login(client, username=name, password="wrong")
    assert "Too many failed attempts" in _login(client, username="bob").content.decode()
    assert _login(Client(), username="bob", address="10.0.0.2").status_code == 302


def test_a_success_clears_the_username_count(client, alice, settings):
    settings.LORASMITH_LOGIN_FAILURES_ALLOWED = 3
    _login(client, password="wrong", address="10.0.0.5")
    _login(client, password="wrong", address="10.0.0.6")
    assert _login(Client(), address="10.0.0.7").status_code == 302
    _login(client, password="wrong", address="10.0.0.8")
    assert _login(Client(), address="10.0.0.9").status_code == 302


def test_logged_in_user_is_sent_on(browser):
    assert browser.get("/accounts/login/")["Location"] == "/runs/"


def test_landing_page_sends_to_login_or_runs(client, alice):
    assert client.get("/")["Location"] == "/accounts/login/"
    client.force_login(alice)
    assert client.get("/")["Location"] == "/runs/"


def test_with_redis_every_web_process_counts_the_same_failures(tmp_path):
    """With REDIS_URL the throttle's counts live in Redis: failures in one web process are refused
    in another (with the default per-process cache each would allow its own budget)."""
    _require("Redis", _redis_ok())
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")},
        "LORASMITH_DATA_DIR": str(tmp_path),
        "REDIS_URL": REDIS_TEST_URL,
        "LORASMITH_REDIS_NAMESPACE": f"lorasmith-test-{uuid.uuid4().hex[:8]}",
        "LORASMITH_LOGIN_FAILURES_ALLOWED": "2",
        "LORASMITH_LOGIN_LOCKOUT_SECONDS": "60",
    }

    def in_a_process(code: str) -> str:
        script = f"from accounts import throttle\nfrom django.conf import settings\n{code}"
        done = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]  # after the shell's own "N objects imported"

    first = in_a_process(
        "print(settings.CACHES['default']['BACKEND'])\n"
        "throttle.record_failure('mallory', '10.9.9.9'); throttle.record_failure('mallory', '10.9.9.9')"
    )
    assert first == "django.core.cache.backends.redis.RedisCache"
    assert in_a_process("print(throttle.login_allowed('mallory', '10.8.8.8'))") == "False"  # the username's count
    assert in_a_process("print(throttle.login_allowed('someone', '10.8.8.8'))") == "True"
