"""The runner process's resident engines: one per base model, created on first use (after any
fork, inside the worker) and kept for the life of the process; adapters nobody can use any more
are dropped from them between cycles."""

from __future__ import annotations

import logging
import os
import socket
import threading

from django.conf import settings
from django.utils import timezone

from gpu_runner import Engine

from ..models import RunnerHeartbeat
from ..upkeep import retention

log = logging.getLogger(__name__)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def engine_for(base_model: str) -> Engine:
    with _lock:
        if base_model not in _engines:
            _engines[base_model] = Engine(
                base_model, data_dir=settings.DATA_DIR, memory_budget_bytes=settings.LORASMITH.adapter_memory_bytes
            )
        return _engines[base_model]


def release_idle_adapters() -> int:
    """Drop the adapters nobody can use any more (`retention.idle_adapter_ids`). A dropped training
    adapter that is asked for again is rebuilt from the op log, so this only frees memory. Call
    between cycles."""
    with _lock:
        engines = list(_engines.values())
    dropped = 0
    for engine in engines:
        for adapter_id in retention.idle_adapter_ids(engine.adapter_ids()):
            engine.remove_adapter(adapter_id)
            dropped += 1
    if dropped:
        log.info("dropped %d idle adapters", dropped)
    return dropped


RUNNER = f"{socket.gethostname()}:{os.getpid()}"


def record_heartbeat(base_model: str) -> None:
    """What this runner holds for `base_model` now (its resident adapters and their memory), for
    the dashboard's overview; zeros before its engine is loaded."""
    with _lock:
        engine = _engines.get(base_model)
    report = engine.memory_report() if engine is not None else {}
    RunnerHeartbeat.objects.update_or_create(
        runner=RUNNER,
        base_model=base_model,
        defaults={
            "resident_adapters": report.get("resident_adapters", []),
            "adapters": report.get("adapters", 0),
            "resident_bytes": report.get("resident_bytes", 0),
            "budget_bytes": report.get("budget_bytes", settings.LORASMITH.adapter_memory_bytes),
        },
    )


def report_alive() -> int:
    """Renew this runner's heartbeat rows without recomputing them: an idle runner is alive, and
    what it holds has not changed since its last cycle. Safe from another thread (it reads no
    engine). Returns the rows renewed."""
    return RunnerHeartbeat.objects.filter(runner=RUNNER).update(updated_at=timezone.now())
