"""Chores a runner does between cycles, at most once per interval per process: purge checkpoints
past their TTL, end sessions whose heartbeat stopped (TINKER_WIRE §3.4: the server ends silent
sessions and drops their queued sampling work; accepted training work still runs), then free what
finished sessions held: their ephemeral sampler snapshots on disk and their adapters in memory; and
with an object store, keep this process's local copies of stored files under LORASMITH_CACHE_MAX_BYTES."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .. import storage
from ..models import Operation, Session
from . import retention

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 60.0
_last_run = float("-inf")


def run_if_due(also: Sequence[Callable[[], object]] = ()) -> None:
    """The chores, then `also` (the runner's own: dropping idle adapters from its engines). Never
    raises: callers are cycles, and a failed chore is retried next interval."""
    global _last_run
    if time.monotonic() - _last_run < INTERVAL_SECONDS:
        return
    _last_run = time.monotonic()
    chores = (
        retention.purge_expired,
        expire_silent_sessions,
        retention.release_finished_sessions_weights,
        trim_local_cache,
        *also,
    )
    for chore in chores:
        try:
            chore()
        except Exception:
            log.exception("housekeeping: %s failed", getattr(chore, "__name__", chore))


def trim_local_cache() -> int:
    return storage.trim_cache(settings.LORASMITH.cache_max_bytes)


def expire_silent_sessions() -> int:
    """Finish sessions with no heartbeat for SESSION_TIMEOUT_SECONDS; cancel their queued samples."""
    cutoff = timezone.now() - timedelta(seconds=settings.LORASMITH.session_timeout_seconds)
    with transaction.atomic():
        silent = list(
            Session.objects.select_for_update()
            .filter(finished_reason="", last_heartbeat_at__lt=cutoff)
            .values_list("id", flat=True)
        )
        Session.objects.filter(id__in=silent).update(
            finished_reason="expired", finished_detail="no heartbeat within the session timeout"
        )
        dropped = Operation.objects.filter(
            sampling_session__session_id__in=silent, status=Operation.Status.QUEUED
        ).finish(Operation.Status.CANCELLED, error="session expired: no heartbeat", category="user")
    if silent:
        log.info("expired %d silent sessions, cancelled %d queued samples", len(silent), len(dropped))
    return len(silent)
