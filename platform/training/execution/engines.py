"""The runner process's resident engines: one per registered runner (a base model on a device),
created on first use (after any fork, inside the worker) and kept for the life of the process;
adapters nobody can use any more are dropped from them between cycles.

Each engine also remembers under which placement of its run every training adapter was built: a
run that moved away and came back (its runner was declared dead, then revived) has a stale copy
here, which must be rebuilt from the op log rather than trained on (DESIGN §6)."""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from django.conf import settings
from django.utils import timezone

from gpu_runner import Engine

from ..models import Runner, RunnerHeartbeat
from ..upkeep import retention

log = logging.getLogger(__name__)


@dataclass
class Resident:
    engine: Engine
    built_under: dict[str, int] = field(default_factory=dict)  # run id -> its placement_epoch then


_engines: dict[str, Resident] = {}
_lock = threading.Lock()


def resident_for(runner: Runner) -> Resident:
    with _lock:
        if runner.id not in _engines:
            engine = Engine(
                runner.base_model,
                data_dir=settings.DATA_DIR,
                device=runner.device or None,
                memory_budget_bytes=settings.LORASMITH.adapter_memory_bytes,
                dtype=settings.LORASMITH.engine_dtype or None,
                max_pass_tokens=settings.LORASMITH.engine_pass_tokens,
            )
            _engines[runner.id] = Resident(engine)
        return _engines[runner.id]


def resident_if_loaded(runner_id: str) -> Resident | None:
    with _lock:
        return _engines.get(runner_id)


def engine_for(runner: Runner) -> Engine:
    return resident_for(runner).engine


def release_idle_adapters() -> int:
    """Drop the adapters nobody can use any more (`retention.idle_adapter_ids`). A dropped training
    adapter that is asked for again is rebuilt from the op log, so this only frees memory. Call
    between cycles."""
    with _lock:
        engines = [resident.engine for resident in _engines.values()]
    dropped = 0
    for engine in engines:
        for adapter_id in retention.idle_adapter_ids(engine.adapter_ids()):
            engine.remove_adapter(adapter_id)
            dropped += 1
    if dropped:
        log.info("dropped %d idle adapters", dropped)
    return dropped


RUNNER = f"{socket.gethostname()}:{os.getpid()}"


def record_heartbeat(runner: Runner) -> None:
    """What `runner` holds now (its resident adapters and their memory), for the dashboard's
    overview; zeros before its engine is loaded."""
    with _lock:
        resident = _engines.get(runner.id)
    report = resident.engine.memory_report() if resident is not None else {}
    RunnerHeartbeat.objects.update_or_create(
        runner=RUNNER,
        base_model=runner.base_model,
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
