"""Django admin for API keys: listed by prefix, revocable; the hash is never shown or editable."""

from django.contrib import admin

from .forms import ThrottledAdminLoginForm
from .models import ApiKey
from .services import revoke_keys

admin.site.login_form = ThrottledAdminLoginForm  # the dashboard's login throttle, for /admin/login/ too


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("prefix", "user__username", "name")
    fields = ("prefix", "user", "name", "created_at", "last_used_at", "revoked_at")
    readonly_fields = fields
    actions = ["revoke"]

    def has_add_permission(self, request) -> bool:
        return False  # keys are issued with `manage.py issue_api_key`, which shows the secret once

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request, queryset):
        revoke_keys(queryset.filter(revoked_at__isnull=True))
