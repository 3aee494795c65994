"""Checkpoint removal, by the owner (DELETE) or when its TTL runs out: the files go with the row.

Access already treats an expired checkpoint as gone (`access.unexpired`); the purge frees its disk.
Runners purge between cycles (`housekeeping`); `manage.py purge_checkpoints` does it from cron.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from django.utils import timezone

from . import storage
from .models import Checkpoint

log = logging.getLogger(__name__)

def delete_checkpoint(checkpoint: Checkpoint) -> None:
    directory = Path(checkpoint.directory)
    checkpoint.delete()
    shutil.rmtree(directory, ignore_errors=True)
    storage.archive_path(directory).unlink(missing_ok=True)


def purge_expired() -> int:
    """Delete every checkpoint past its TTL; returns how many."""
    expired = list(Checkpoint.objects.filter(expires_at__lt=timezone.now()))
    for checkpoint in expired:
        delete_checkpoint(checkpoint)
    if expired:
        log.info("purged %d expired checkpoints", len(expired))
    return len(expired)

