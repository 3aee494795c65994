"""Snapshots of a run's adapter + optimizer (DESIGN §6): every LORASMITH_SNAPSHOT_EVERY_STEPS
optimizer steps, a `SaveState` rides in the same cycle right after the optimizer step that makes
the count, and on a graceful stop every run the runner holds is saved. A runner that takes a run
over loads the latest snapshot and replays only the logged operations after it (`plan.restore`).

A snapshot is recorded (its `Snapshot` row) only once its files are whole and the step it follows
succeeded; the op log stays the truth, so a lost snapshot only means a longer replay. The two
latest are kept per run.
"""

from __future__ import annotations

import logging
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from gpu_runner.types import SaveState

from ..models import Operation, Snapshot, TrainingRun
from .engines import Resident

log = logging.getLogger(__name__)

KEPT = 2


@dataclass
class Due:
    run: TrainingRun
    seq_id: int  # the optimizer step's operation: the snapshot covers it and everything before
    step: int
    save: SaveState


def directory_for(run: TrainingRun, seq_id: int) -> Path:
    safe_run = re.sub(r"[^A-Za-z0-9._-]", "_", run.id)
    return settings.DATA_DIR / "snapshots" / safe_run / f"seq-{seq_id}-{uuid.uuid4().hex[:8]}"


def due_after(op: Operation, steps_so_far: dict[str, int]) -> Due | None:
    """A snapshot to take right after optimizer step `op`, if it makes the count. `steps_so_far`:
    per run, the steps counted in this cycle before it (starting from the run's stored step)."""
    every = settings.LORASMITH.snapshot_every_steps
    run = op.training_run
    if every <= 0 or op.kind != "optim_step" or run is None:
        return None
    step = steps_so_far.get(run.id, run.step) + 1
    steps_so_far[run.id] = step
    if step % every:
        return None
    return Due(run, op.seq_id, step, SaveState(run.id, directory_for(run, op.seq_id), include_optimizer=True))


def record(due: Due) -> None:
    """The snapshot's files are written: its row, then the older ones beyond `KEPT` go."""
    Snapshot.objects.update_or_create(
        training_run=due.run,
        seq_id=due.seq_id,
        defaults={"step": due.step, "directory": str(due.save.directory)},
    )
    older = Snapshot.objects.filter(training_run=due.run).order_by("-seq_id")[KEPT:]
    for snapshot in list(older):
        shutil.rmtree(snapshot.directory, ignore_errors=True)
        snapshot.delete()


def take_all(runner_id: str, resident: Resident) -> int:
    """On a graceful stop (no cycle in flight): snapshot every run held here whose adapter is
    current and has done work since its latest snapshot. Returns how many were taken."""
    taken = 0
    for run in TrainingRun.objects.filter(runner_id=runner_id):
        if not resident.engine.has_adapter(run.id) or resident.built_under.get(run.id) != run.placement_epoch:
            continue
        # weights and optimizer moments change only at optimizer steps (and loads): a snapshot
        # taken now covers up to the last finished step, and gradients accumulated since are
        # replayed from the log
        done = run.operations.filter(status=Operation.Status.DONE)
        last_step = done.filter(kind="optim_step").order_by("-seq_id").values_list("seq_id", flat=True).first()
        covered = run.snapshot_seq_id()
        if last_step is None or (covered is not None and covered >= last_step):
            continue
        if done.filter(kind="load_weights", seq_id__gt=last_step).exists():
            continue
        due = Due(run, last_step, run.step, SaveState(run.id, directory_for(run, last_step), include_optimizer=True))
        [result] = resident.engine.run_cycle([due.save])
        if result.ok:
            record(due)
            taken += 1
        else:
            log.warning("could not snapshot run %s on stopping: %s", run.id, result.error)
    return taken
