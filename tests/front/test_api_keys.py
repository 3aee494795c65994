"""The API keys page: a new key's secret is on the creating answer only (with a copy button and an
SDK snippet naming this server), the list shows prefixes only, and nobody sees another's keys."""

from __future__ import annotations

import re

from accounts.models import ApiKey
from accounts.services import issue_api_key, user_for_key


def test_empty_state_says_what_to_do(browser):
    page = browser.get("/keys/").content.decode()
    assert "You have no active keys. Create one above" in page


def test_create_shows_the_secret_once(browser, alice):
    created = browser.post("/keys/", {"name": "laptop"})
    assert created.status_code == 302 and created["Location"] == "/keys/"  # POST-redirect-GET
    answer = browser.get("/keys/")
    page = answer.content.decode()
    secret = re.search(r'id="new-key-secret">(tml-[^<]+)<', page)[1]
    assert answer.status_code == 200 and "no-store" in answer["Cache-Control"]
    assert user_for_key(secret) == alice
    assert 'data-copy="#new-key-secret"' in page
    assert f'lorasmith.ServiceClient(base_url="http://testserver", api_key="{secret}")' in page
    again = browser.get("/keys/").content.decode()  # a reload: the list, no secret, no second key
    assert secret not in again and secret[:12] in again and "laptop" in again
    assert ApiKey.objects.filter(user=alice).count() == 1


def test_a_name_is_required(browser):
    answer = browser.post("/keys/", {"name": ""})
    assert answer.status_code == 200 and "This field is required" in answer.content.decode()
    assert ApiKey.objects.count() == 0


def test_lists_own_active_keys_with_last_use(browser, alice, bob):
    used = issue_api_key(alice, "used")
    user_for_key(used)
    issue_api_key(alice, "revoked-one")
    ApiKey.objects.filter(name="revoked-one").update(revoked_at="2026-01-01T00:00Z")
    issue_api_key(bob, "bobs-key")
    page = browser.get("/keys/").content.decode()
    assert "used" in page and "never" not in page
    assert "revoked-one" not in page and "bobs-key" not in page


def test_anonymous_is_sent_to_login(client, db):
    assert client.get("/keys/")["Location"] == "/accounts/login/?next=/keys/"
    assert client.post("/keys/", {"name": "x"}).status_code == 302
    assert ApiKey.objects.count() == 0
