"""Issuing, checking and revoking API keys. Only `issue_api_key` ever sees a plain secret."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

from training import events

from .models import ApiKey

KEY_PREFIX = "tml-"
LAST_USED_RESOLUTION = timedelta(seconds=60)  # don't write the row on every request


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue_api_key(user, name: str = "") -> str:
    """Create a key for `user`; the returned secret is never stored and cannot be shown again."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    ApiKey.objects.create(user=user, name=name, prefix=secret[:12], key_hash=hash_key(secret))
    return secret


def ensure_user(username: str):
    user, _ = get_user_model().objects.get_or_create(username=username)
    return user


def user_for_key(key: str | None):
    """The active user a presented key belongs to, or None; records when the key was last used."""
    if not key or not key.startswith(KEY_PREFIX):
        return None
    api_key = ApiKey.objects.select_related("user").filter(key_hash=hash_key(key), revoked_at__isnull=True).first()
    if api_key is None or not api_key.user.is_active:
        return None
    now = timezone.now()
    if api_key.last_used_at is None or now - api_key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=now)
    user = api_key.user
    user.lorasmith_api_key_id = api_key.pk  # type: ignore[attr-defined]  # this request's own instance: `key_id_of`
    return user


def key_still_active(key_id: int | None) -> bool:
    """Whether the key a connection was opened with may still be used (not revoked, its user active)."""
    if key_id is None:
        return False
    return ApiKey.objects.filter(pk=key_id, revoked_at__isnull=True, user__is_active=True).exists()


def key_id_of(user) -> int | None:
    """The id of the API key `user` came in with on this request (set by `user_for_key`), so that
    what the request stores can name it; None for a browser session or a user loaded otherwise."""
    return getattr(user, "lorasmith_api_key_id", None)


def revoke_api_key(user, prefix: str) -> int:
    return revoke_keys(ApiKey.objects.filter(user=user, prefix=prefix, revoked_at__isnull=True))


def revoke_api_key_by_id(user, key_id: int) -> int:
    """Revoke one of `user`'s keys by its row id (the dashboard's handle); 0 if not theirs or already revoked."""
    return revoke_keys(ApiKey.objects.filter(user=user, pk=key_id, revoked_at__isnull=True))


def revoke_keys(keys) -> int:
    """Revoke `keys` (an ApiKey queryset; every revocation goes through here): from now on
    `user_for_key` refuses them, and the WebSockets opened with them are told to close."""
    found = list(keys.values_list("pk", "user_id"))
    revoked = ApiKey.objects.filter(pk__in=[pk for pk, _ in found], revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    for key_id, user_id in found:
        events.api_key_revoked(user_id, key_id)
    return revoked
