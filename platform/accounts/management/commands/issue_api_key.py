"""`manage.py issue_api_key USERNAME [--name NAME]`: creates the user if missing, prints the key last."""

from django.core.management.base import BaseCommand

from accounts.services import ensure_user, issue_api_key
from lorasmith_server.migrations_at_start import ensure_migrated


class Command(BaseCommand):
    help = "Create an API key for USERNAME (creating the user if needed); the key is printed alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="")

    def handle(self, username, name, **options):
        ensure_migrated()
        user = ensure_user(username)
        self.stdout.write(f"API key for {user.username} (shown once, store it now):")
        self.stdout.write(issue_api_key(user, name))
