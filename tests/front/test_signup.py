"""Sign-up: open by default, closed by LORASMITH_OPEN_SIGNUP=false; the new user is logged in and
sent to create an API key; bad input is answered with what to fix."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from .conftest import PASSWORD

pytestmark = pytest.mark.django_db
FORM = {"username": "carol", "email": "carol@example.com", "password1": PASSWORD, "password2": PASSWORD}


def test_signup_page_has_labelled_fields(client):
    page = client.get("/accounts/signup/")
    assert page.status_code == 200
    for field in ("username", "email", "password1", "password2"):
        assert f'for="id_{field}"' in page.content.decode()


def test_signup_creates_the_user_logs_in_and_points_to_api_keys(client):
    answer = client.post("/accounts/signup/", FORM)
    assert answer.status_code == 302 and answer["Location"] == "/keys/"
    user = get_user_model().objects.get(username="carol")
    assert user.email == "carol@example.com" and user.check_password(PASSWORD)
    assert client.get("/keys/").status_code == 200  # logged in


def test_mismatched_passwords_are_refused(client):
    answer = client.post("/accounts/signup/", {**FORM, "password2": "something-else-2"})
    assert answer.status_code == 200 and "didn’t match" in answer.content.decode()
    assert not get_user_model().objects.filter(username="carol").exists()


def test_a_taken_email_is_refused(client, alice):
    answer = client.post("/accounts/signup/", {**FORM, "email": "ALICE@example.com"})
    assert answer.status_code == 200 and "exists already" in answer.content.decode()


def test_closed_signup_refuses(client, settings):
    settings.LORASMITH_OPEN_SIGNUP = False
    assert client.get("/accounts/signup/").status_code == 403
    assert client.post("/accounts/signup/", FORM).status_code == 403
    assert not get_user_model().objects.filter(username="carol").exists()
    assert "Sign up" not in client.get("/accounts/login/").content.decode()


def test_signup_needs_the_csrf_token(alice):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    assert strict.post("/accounts/signup/", FORM).status_code == 403
