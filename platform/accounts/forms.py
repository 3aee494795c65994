"""Login forms that count failures (`throttle`): one mixin, used by the admin's login and the dashboard's."""

from __future__ import annotations

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm

from . import throttle


class ThrottledLogin:
    """Refuses a login once its username or client address has failed too often (before checking
    the password, so a locked account cannot be guessed at), and counts each failure."""

    throttled_message = "Too many failed attempts. Wait a few minutes, or reset your password."

    def clean(self):
        username = getattr(self, "data", {}).get("username", "")
        request = getattr(self, "request", None)
        address = request.META.get("REMOTE_ADDR", "") if request else ""
        if not throttle.login_allowed(username, address):
            raise forms.ValidationError(self.throttled_message, code="throttled")
        try:
            cleaned = super().clean()  # type: ignore[misc]
        except forms.ValidationError:
            throttle.record_failure(username, address)
            raise
        throttle.record_success(username, address)
        return cleaned


class ThrottledAdminLoginForm(ThrottledLogin, AdminAuthenticationForm):
    """/admin/login/, throttled as the dashboard's login is."""
