"""Outside DEBUG the session and CSRF cookies are Secure and HttpOnly where they can be, HSTS is
on over HTTPS, and dashboard pages refuse to be framed."""

from __future__ import annotations

from django.conf import settings

from .conftest import PASSWORD


def test_cookies_and_hsts_defaults():
    assert not settings.DEBUG
    assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE and settings.SESSION_COOKIE_HTTPONLY
    assert settings.SECURE_HSTS_SECONDS >= 31536000


def test_login_sets_a_secure_httponly_session_cookie(client, alice):
    client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    cookie = client.cookies["sessionid"]
    assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Lax"


def test_hsts_over_https_and_no_framing(client, db):
    answer = client.get("/accounts/login/", secure=True)
    assert answer["Strict-Transport-Security"].startswith("max-age=31536000")
    assert answer["X-Frame-Options"] == "DENY"


def test_admin_stays(client, db):
    assert client.get("/admin/")["Location"].startswith("/admin/login/")
