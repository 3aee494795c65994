"""DRF authentication by the `X-API-Key` header (Tinker's scheme)."""

from __future__ import annotations

from rest_framework import authentication, exceptions

from .services import user_for_key


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):
        key = request.headers.get("X-API-Key")
        if not key:
            return None
        user = user_for_key(key)
        if user is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API key")
        return user, key

    def authenticate_header(self, request) -> str:
        return "X-API-Key"  # makes DRF answer 401 (not 403) when the key is missing
