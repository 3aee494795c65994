"""Operators list keys by prefix and revoke them, from the command line or the admin; no secret shows."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.admin.sites import site
from django.core.management import call_command
from django.core.management.base import CommandError

from accounts.models import ApiKey
from accounts.services import ensure_user, issue_api_key, user_for_key


@pytest.mark.django_db
def test_list_and_revoke_by_prefix():
    key = issue_api_key(ensure_user("erin"), "laptop")
    issue_api_key(ensure_user("frank"))
    user_for_key(key)
    listing = StringIO()
    call_command("api_keys", "erin", stdout=listing)
    [row] = listing.getvalue().strip().splitlines()
    assert row.split("\t")[:3] == [key[:12], "erin", "laptop"] and row.endswith("active") and key not in row
    call_command("api_keys", "erin", "--revoke", key[:12], stdout=StringIO())
    assert user_for_key(key) is None
    with pytest.raises(CommandError, match="no active key"):
        call_command("api_keys", "erin", "--revoke", key[:12], stdout=StringIO())
    everyone = StringIO()
    call_command("api_keys", stdout=everyone)
    assert [r.split("\t")[1] for r in everyone.getvalue().strip().splitlines()] == ["erin", "frank"]


@pytest.mark.django_db
def test_admin_revokes_and_hides_the_hash():
    key = issue_api_key(ensure_user("gina"))
    admin = site._registry[ApiKey]
    assert "key_hash" not in admin.fields and not admin.has_add_permission(None)
    admin.revoke(None, ApiKey.objects.filter(user__username="gina"))
    assert user_for_key(key) is None
