"""The runner process's resident engines: one per base model, created on first use (after any
fork, inside the worker) and kept for the life of the process; adapters nobody can use any more
are dropped from them between cycles."""

from __future__ import annotations

import logging
import threading

from django.conf import settings

from gpu_runner import Engine

from .models import Operation, SamplingSession, Session

log = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine_for(base_model: str) -> Engine:
    with _lock:
        if base_model not in _engines:
            _engines[base_model] = Engine(
                base_model, data_dir=settings.DATA_DIR, memory_budget_bytes=settings.LORASMITH["ADAPTER_MEMORY_BYTES"]
            )
        return _engines[base_model]


def release_idle_adapters() -> int:
    """Drop adapters of finished sessions and of released samplers, unless work is still pending
    for them (an expired session's accepted training still runs). A dropped training adapter that
    is asked for again is rebuilt from the op log, so this only frees memory. Call between cycles."""
    with _lock:
        engines = list(_engines.values())
    dropped = 0
    for engine in engines:
        ids = engine.adapter_ids()
        finished = set(
            Session.objects.filter(id__in={i.split(":", 1)[0] for i in ids})
            .exclude(finished_reason="")
            .values_list("id", flat=True)
        )
        released = set(
            SamplingSession.objects.filter(id__in=ids, released_at__isnull=False).values_list("id", flat=True)
        )
        idle = {i for i in ids if i.split(":", 1)[0] in finished or i in released}
        pending = Operation.objects.filter(status__in=(Operation.Status.QUEUED, Operation.Status.RUNNING))
        busy = set(pending.filter(training_run_id__in=idle).values_list("training_run_id", flat=True)) | set(
            pending.filter(sampling_session_id__in=idle).values_list("sampling_session_id", flat=True)
        )
        for adapter_id in idle - busy:
            engine.remove_adapter(adapter_id)
            dropped += 1
    if dropped:
        log.info("dropped %d idle adapters", dropped)
    return dropped
