"""Runners as rows (DESIGN §6): registration, heartbeats, death, and placement.

Every runner of a base model has its own queue; a training run is placed on one runner and stays
there (its adapter and optimizer live in that runner's engine), a sampler likewise (its adapter is
imported once). Placement and death are conditional `UPDATE`s, never `select_for_update` (which
does nothing on SQLite): whoever's `UPDATE` matched the row won, everyone else re-reads.

This module only reads and writes rows; moving a dead runner's work (flushing its queue,
re-queuing its cycle) is `dispatch.retire`'s job.
"""

from __future__ import annotations

import os
import random
import socket
import uuid
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, F, Q
from django.utils import timezone

from .base_models import queue_name
from .models import Operation, Runner, SamplingSession, TrainingRun

PLACEMENT_TRIES = 5


def runner_queue(base_model: str, runner_id: str) -> str:
    """A runner's own queue: the base model's queue name, then its id (dots are allowed)."""
    return f"{queue_name(base_model)}.{runner_id}"


def register(base_model: str, device: str = "", queue: str | None = None) -> Runner:
    """A new live runner row for this process and `base_model`. `queue`: the queue it consumes,
    its own by default; a plain `rundramatiq` worker passes the base model's shared queue (it
    retires any runner registered on that queue before it first)."""
    runner_id = uuid.uuid4().hex
    now = timezone.now()
    return Runner.objects.create(
        id=runner_id,
        base_model=base_model,
        host=socket.gethostname(),
        pid=os.getpid(),
        device=device,
        queue=queue or runner_queue(base_model, runner_id),
        capacity_bytes=settings.LORASMITH.adapter_memory_bytes,
        heartbeat_at=now,
    )


def heartbeat(runner_id: str) -> bool:
    """Renew a live runner's heartbeat. False: it was declared dead meanwhile (it stalled for longer
    than the deadline): its runs have moved, and it must `revive` before it takes work again."""
    return Runner.objects.filter(pk=runner_id, state=Runner.State.LIVE).update(heartbeat_at=timezone.now()) == 1


def revive(runner_id: str) -> bool:
    """A runner declared dead that is in fact alive comes back under a new epoch: messages sent to
    it before its death stay fenced off, and it holds no run until new ones are placed on it."""
    return (
        Runner.objects.filter(pk=runner_id, state=Runner.State.DEAD).update(
            state=Runner.State.LIVE, epoch=F("epoch") + 1, heartbeat_at=timezone.now(), busy_cycle="", busy_since=None
        )
        == 1
    )


def dead_deadline() -> datetime:
    """A live runner whose heartbeat is older than this is overdue: declared dead by anyone."""
    return timezone.now() - timedelta(seconds=settings.LORASMITH.runner_dead_after_seconds)


def declare_dead(runner_id: str) -> Runner | None:
    """Mark a live runner dead and bump its epoch (its messages are fenced off from now on). Returns
    the row as it was (its in-flight cycle, its queue) if this call did it, None if another process
    did first or the runner was not live."""
    before = Runner.objects.filter(pk=runner_id, state=Runner.State.LIVE).first()
    if before is None:
        return None
    won = Runner.objects.filter(pk=runner_id, state=Runner.State.LIVE, epoch=before.epoch).update(
        state=Runner.State.DEAD, epoch=F("epoch") + 1, busy_cycle="", busy_since=None
    )
    return before if won == 1 else None


def is_current(runner_id: str, epoch: int) -> bool:
    """Whether a message for (`runner_id`, `epoch`) may still act: the runner is live at that epoch."""
    return Runner.objects.filter(pk=runner_id, epoch=epoch, state=Runner.State.LIVE).exists()


def loads(base_model: str) -> dict[str, int]:
    """Each live runner's load: the unfinished runs and samplers placed on it (two queries)."""
    live = list(Runner.objects.live(base_model).values_list("id", flat=True))
    load = dict.fromkeys(live, 0)
    for model in (TrainingRun, SamplingSession):
        placed = (
            model.objects.filter(runner_id__in=live, session__finished_reason="")
            .values("runner_id")
            .annotate(n=Count("pk"))
        )
        for row in placed:
            load[row["runner_id"]] += row["n"]
    return load


def least_loaded(base_model: str) -> str | None:
    """The live runner of `base_model` with the least placed on it (ties broken at random, so
    placements racing each other spread), or None when no runner is live."""
    load = loads(base_model)
    if not load:
        return None
    lowest = min(load.values())
    return random.choice(sorted(r for r, n in load.items() if n == lowest))


def place_run(run_id: str, base_model: str) -> str | None:
    """The runner holding run `run_id`, placing it first on the least-loaded live runner if it has
    none or its runner is dead. The placement bumps the run's `placement_epoch`. None: no live
    runner of `base_model` (the run waits, queued, for one to register)."""
    return _place(TrainingRun, run_id, base_model, {"placement_epoch": F("placement_epoch") + 1})


def place_sampler(sampler_id: str, base_model: str) -> str | None:
    """As `place_run`, for a sampler: where its adapter is resident, else the least loaded."""
    return _place(SamplingSession, sampler_id, base_model, {})


def _place(model: type[TrainingRun] | type[SamplingSession], pk: str, base_model: str, bump: dict) -> str | None:
    unplaced = Q(runner__isnull=True) | ~Q(runner__state=Runner.State.LIVE)
    for _ in range(PLACEMENT_TRIES):
        held = model.objects.filter(pk=pk).values_list("runner_id", "runner__state").first()
        if held is None:
            return None  # deleted meanwhile
        if held[0] is not None and held[1] == Runner.State.LIVE:
            return held[0]
        target = least_loaded(base_model)
        if target is None:
            return None
        # only if still unplaced (or on a dead runner): a racing placement that won stays
        if model.objects.filter(pk=pk).filter(unplaced).update(runner_id=target, **bump) == 1:
            return target
    return None


def unplaced_with_work(base_model: str) -> tuple[list[str], list[str]]:
    """Runs and samplers of `base_model` with queued operations but no live runner (one query, on
    every dispatch: the queued operations of the base model, joined to their holders)."""
    dead = Runner.State.DEAD
    rows = (
        Operation.objects.filter(base_model=base_model, status=Operation.Status.QUEUED)
        .filter(
            Q(training_run__isnull=False, training_run__runner__isnull=True)
            | Q(training_run__runner__state=dead)
            | Q(sampling_session__isnull=False, sampling_session__runner__isnull=True)
            | Q(sampling_session__runner__state=dead)
        )
        .values_list("training_run_id", "sampling_session_id")
        .distinct()
    )
    runs: set[str] = set()
    samplers: set[str] = set()
    for run_id, sampler_id in rows:
        if run_id is not None:
            runs.add(run_id)
        if sampler_id is not None:
            samplers.add(sampler_id)
    return sorted(runs), sorted(samplers)


def unplace_all(runner_id: str) -> list[str]:
    """Take every run and sampler off a runner (it died or stopped); returns the run ids."""
    runs = list(TrainingRun.objects.filter(runner_id=runner_id).values_list("pk", flat=True))
    TrainingRun.objects.filter(runner_id=runner_id).update(runner=None)
    SamplingSession.objects.filter(runner_id=runner_id).update(runner=None)
    return runs
