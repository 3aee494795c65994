"""Checkpoint removal, by the owner (DELETE) or when its TTL runs out: the files go with the row.

Access already treats an expired checkpoint as gone (`access.unexpired`); the purge frees its disk.
Runners purge at most once a minute after a cycle; `manage.py purge_checkpoints` does it from cron.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from django.utils import timezone

from . import storage
from .models import Checkpoint

log = logging.getLogger(__name__)

PURGE_INTERVAL_SECONDS = 60.0
_last_purge = float("-inf")


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


def purge_expired_if_due() -> None:
    """`purge_expired` at most once per interval in this process; never raises (callers are cycles)."""
    global _last_purge
    if time.monotonic() - _last_purge < PURGE_INTERVAL_SECONDS:
        return
    _last_purge = time.monotonic()
    try:
        purge_expired()
    except Exception:  # noqa: BLE001 - a failed purge is retried next interval; the cycle must not fail
        log.exception("purging expired checkpoints failed")
