"""Login throttling: failed attempts counted in the cache per username and per client address;
past `LORASMITH_LOGIN_FAILURES_ALLOWED` within `LORASMITH_LOGIN_LOCKOUT_SECONDS` either one refuses
further attempts until the window ends. A success clears the username's count (not the address's,
so one good account cannot reset a guesser's budget)."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache


def _keys(username: str, address: str) -> list[str]:
    # hashed: cache keys must be short and free of spaces or control characters, whatever was typed
    user = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [f"login-failures:user:{user}", f"login-failures:ip:{address}"]


def login_allowed(username: str, address: str) -> bool:
    counts = cache.get_many(_keys(username, address))
    return all(count < settings.LORASMITH_LOGIN_FAILURES_ALLOWED for count in counts.values())


def record_failure(username: str, address: str) -> None:
    for key in _keys(username, address):
        # add() starts the window once; incr() keeps its expiry
        if not cache.add(key, 1, timeout=settings.LORASMITH_LOGIN_LOCKOUT_SECONDS):
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=settings.LORASMITH_LOGIN_LOCKOUT_SECONDS)


def record_success(username: str, address: str) -> None:
    cache.delete(_keys(username, address)[0])
