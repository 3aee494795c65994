"""Issuing, checking and revoking API keys. Only `issue_api_key` ever sees a plain secret."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.utils import timezone

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
    return api_key.user


def revoke_api_key(user, prefix: str) -> int:
    return ApiKey.objects.filter(user=user, prefix=prefix, revoked_at__isnull=True).update(revoked_at=timezone.now())


def revoke_api_key_by_id(user, key_id: int) -> int:
    """Revoke one of `user`'s keys by its row id (the dashboard's handle); 0 if not theirs or already revoked."""
    return ApiKey.objects.filter(user=user, pk=key_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
