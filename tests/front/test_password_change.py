"""Password change: needs the old password; the new one works at once and the session stays."""

from __future__ import annotations

from .conftest import PASSWORD

NEW = "another-long-password-2"


def test_change_password(browser, alice):
    answer = browser.post("/accounts/password/", {"old_password": PASSWORD, "new_password1": NEW, "new_password2": NEW})
    assert answer.status_code == 302 and answer["Location"] == "/accounts/password/changed/"
    alice.refresh_from_db()
    assert alice.check_password(NEW)
    assert browser.get("/runs/").status_code == 200


def test_wrong_old_password_is_refused(browser, alice):
    answer = browser.post("/accounts/password/", {"old_password": "nope", "new_password1": NEW, "new_password2": NEW})
    assert answer.status_code == 200 and "incorrectly" in answer.content.decode()
    alice.refresh_from_db()
    assert alice.check_password(PASSWORD)


def test_anonymous_is_sent_to_login(client, db):
    assert client.get("/accounts/password/")["Location"].startswith("/accounts/login/")
