"""Log out: POST only (a link cannot log anyone out), after a confirmation page, and the session is
gone afterwards."""

from __future__ import annotations


def test_logout_ends_the_session(browser):
    answer = browser.post("/accounts/logout/")
    assert answer.status_code == 302 and answer["Location"] == "/accounts/login/"
    assert browser.get("/runs/").status_code == 302


def test_logout_by_get_asks_for_confirmation(browser):
    page = browser.get("/accounts/logout/")
    html = page.content.decode()
    assert (
        page.status_code == 200 and 'method="post" action="/accounts/logout/"' in html and "Log out of alice?" in html
    )
    assert browser.get("/runs/").status_code == 200  # still logged in


def test_error_pages_are_styled_and_the_favicon_is_served(client, settings):
    settings.DEBUG = False
    missing = client.get("/no/such/page/")
    assert missing.status_code == 404 and "lorasmith.css" in missing.content.decode()
    assert "favicon.svg" in missing.content.decode()
    icon = client.get("/favicon.ico")
    assert icon.status_code == 301 and icon["Location"].endswith("favicon.svg")
