"""`manage.py api_keys [USERNAME]` lists keys by prefix; `manage.py api_keys USERNAME --revoke PREFIX`
revokes one. Operators never see a secret here: only the prefix identifies a key."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from accounts.models import ApiKey
from accounts.services import revoke_api_key
from lorasmith_server.migrations_at_start import ensure_migrated


class Command(BaseCommand):
    help = "List API keys (prefix, name, owner, created, last used, revoked), or revoke one by prefix."

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?")
        parser.add_argument("--revoke", metavar="PREFIX", help="revoke USERNAME's key with this prefix")

    def handle(self, username=None, revoke=None, **options):
        ensure_migrated()
        if revoke:
            if not username:
                raise CommandError("--revoke needs USERNAME")
            user = get_user_model().objects.filter(username=username).first()
            if user is None or revoke_api_key(user, revoke) == 0:
                raise CommandError(f"{username} has no active key with prefix {revoke!r}")
            self.stdout.write(f"revoked {revoke}")
            return
        keys = ApiKey.objects.select_related("user").order_by("user__username", "created_at")
        if username:
            keys = keys.filter(user__username=username)
        for key in keys:
            self.stdout.write(
                "\t".join(
                    [
                        key.prefix,
                        key.user.username,
                        key.name or "-",
                        key.created_at.isoformat(timespec="seconds"),
                        key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never",
                        f"revoked {key.revoked_at.isoformat(timespec='seconds')}" if key.revoked_at else "active",
                    ]
                )
            )
