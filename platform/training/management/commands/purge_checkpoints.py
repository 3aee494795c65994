"""`manage.py purge_checkpoints`: delete checkpoints past their TTL, files included (for cron)."""

from django.core.management.base import BaseCommand

from lorasmith_server.migrations_at_start import ensure_migrated
from training.upkeep.retention import purge_expired


class Command(BaseCommand):
    help = "Delete every checkpoint whose TTL has run out, with its files; prints how many."

    def handle(self, **options):
        ensure_migrated()
        self.stdout.write(f"purged {purge_expired()} expired checkpoints")
