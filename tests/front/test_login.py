"""Log in: a right password logs in; failures are counted per username and per address, and past
the limit even the right password is refused until the window ends."""

from __future__ import annotations

import pytest
from django.test import Client

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
