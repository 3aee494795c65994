"""Per-user quotas (DESIGN §6): active training runs, pending operations and their payload bytes.

A request over a quota is answered 429 with a retry hint before anything is stored, so the
client's retry of the same request (same seq_id) is accepted once there is room; nothing already
accepted is touched. A request that fills a gap other requests of its model wait on is never
refused: refusing it would hold the user's queue full forever.
"""

from __future__ import annotations

import json

from django.conf import settings
from django.db.models import Count, Sum

from ..errors import RateLimited, TooLarge
from ..models import Operation, TrainingRun

RETRY_PENDING_SECONDS = 2.0  # queued work drains cycle by cycle
RETRY_RUNS_SECONDS = 30.0  # runs end only when their sessions finish or expire


def payload_size(payload: dict) -> int:
    return len(json.dumps(payload, separators=(",", ":")))


def check_active_runs(user) -> None:
    """Before a new training run is created: runs of unfinished sessions count."""
    limit = settings.LORASMITH.max_active_runs
    if not limit:
        return
    active = TrainingRun.objects.filter(owner=user, session__finished_reason="").count()
    if active >= limit:
        raise RateLimited(
            f"you have {active} active training runs, the most allowed is {limit}; finish a session "
            "(sessions/{id}/finish) or wait for one to expire, then retry",
            "quota.active_runs",
            RETRY_RUNS_SECONDS,
        )


def check_size(payload_bytes: int) -> None:
    """A request bigger than the whole pending-bytes quota can never be accepted: 413, not 429."""
    max_bytes = settings.LORASMITH.max_pending_bytes
    if max_bytes and payload_bytes > max_bytes:
        raise TooLarge(
            f"this request's payload is {payload_bytes} bytes, more than the {max_bytes} bytes a user "
            "may have pending; split it into smaller requests",
            "body",
        )


def check_pending(user, payload_bytes: int, run: TrainingRun | None = None, seq_id: int | None = None) -> None:
    """Before an operation of `payload_bytes` is stored for `user` (of `run` at `seq_id`, for training)."""
    max_ops, max_bytes = settings.LORASMITH.max_pending_operations, settings.LORASMITH.max_pending_bytes
    if not (max_ops or max_bytes):
        return
    pending = Operation.objects.pending().filter(owner=user).aggregate(count=Count("id"), size=Sum("payload_bytes"))
    size = pending["size"] or 0
    over_ops = max_ops and pending["count"] >= max_ops
    over_bytes = max_bytes and size + payload_bytes > max_bytes
    if not (over_ops or over_bytes) or (run is not None and _fills_gap(run, seq_id)):
        return
    if over_ops:
        raise RateLimited(
            f"you have {pending['count']} operations pending, the most allowed is {max_ops}; "
            "retry when some have finished",
            "quota.pending_operations",
            RETRY_PENDING_SECONDS,
        )
    raise RateLimited(
        f"your pending operations hold {size} bytes and this request {payload_bytes} more, "
        f"over the {max_bytes} bytes allowed; retry when some have finished",
        "quota.pending_bytes",
        RETRY_PENDING_SECONDS,
    )


def _fills_gap(run: TrainingRun, seq_id: int | None) -> bool:
    """Whether requests of `run` with a higher seq_id already wait for this one."""
    return Operation.objects.filter(training_run=run, seq_id__gt=seq_id, status=Operation.Status.QUEUED).exists()
