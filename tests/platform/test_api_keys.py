"""API keys: shown once, stored hashed, revocable; the management command prints the key last."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from accounts.models import ApiKey
from accounts.services import ensure_user, issue_api_key, revoke_api_key, user_for_key


@pytest.mark.django_db
def test_keys_are_hashed_and_revocable():
    user = ensure_user("carol")
    key = issue_api_key(user, "laptop")
    assert key.startswith("tml-") and len(key) > 40
    stored = ApiKey.objects.get(user=user)
    assert key not in (stored.key_hash, stored.prefix, stored.name) and key.startswith(stored.prefix)
    assert user_for_key(key) == user and stored.last_used_at is None
    assert ApiKey.objects.get(pk=stored.pk).last_used_at is not None
    assert revoke_api_key(user, stored.prefix) == 1
    assert user_for_key(key) is None and user_for_key("tml-guess") is None and user_for_key(None) is None


@pytest.mark.django_db
def test_issue_api_key_command_creates_user_and_prints_key_last():
    out = StringIO()
    call_command("issue_api_key", "dave", "--name", "ci", stdout=out)
    key = out.getvalue().strip().splitlines()[-1]
    assert user_for_key(key).username == "dave"
    assert ApiKey.objects.get(user__username="dave").name == "ci"
