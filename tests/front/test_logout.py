"""Log out: POST only (a link cannot log anyone out), and the session is gone afterwards."""

from __future__ import annotations


def test_logout_ends_the_session(browser):
    answer = browser.post("/accounts/logout/")
    assert answer.status_code == 302 and answer["Location"] == "/accounts/login/"
    assert browser.get("/runs/").status_code == 302


def test_logout_by_get_is_refused(browser):
    assert browser.get("/accounts/logout/").status_code == 405
    assert browser.get("/runs/").status_code == 200
