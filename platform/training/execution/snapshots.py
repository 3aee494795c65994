"""Snapshots of a run's adapter + optimizer (DESIGN §6): every LORASMITH_SNAPSHOT_EVERY_STEPS
optimizer steps, a `SaveState` rides in the same cycle right after the optimizer step that makes
the count, and on a graceful stop every run the runner holds is saved. A runner that takes a run
over loads the latest snapshot and replays only the logged operations after it (`plan.restore`).

A snapshot is recorded (its `Snapshot` row) only once its files are whole and stored and the step
it follows succeeded; the op log stays the truth, so a lost snapshot only means a longer replay.
The two latest are kept per run. The engine writes a snapshot's files during the cycle (the state
copied off the device); with an object store, uploading them and recording the row happen on a
background thread, one snapshot after another, so the next cycle need not wait for the store.
"""

from __future__ import annotations

import logging
import re
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import connection

from gpu_runner.types import SaveState

from .. import object_store, storage
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
    """The snapshot's files are written: stored (in the background with an object store), then its
    row, then the older ones beyond `KEPT` go."""
    if object_store.is_remote():
        _writer.submit(_store_in_background, due)
    else:
        _store(due)


def _store(due: Due) -> None:
    location = storage.publish(due.save.directory)
    Snapshot.objects.update_or_create(
        training_run=due.run,
        seq_id=due.seq_id,
        defaults={"step": due.step, "directory": location},
    )
    older = Snapshot.objects.filter(training_run=due.run).order_by("-seq_id")[KEPT:]
    for snapshot in list(older):
        storage.remove_tree(snapshot.directory)
        snapshot.delete()


_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snapshot-writer")  # in order, one at a time


def _store_in_background(due: Due) -> None:
    try:
        _store(due)
    except Exception:  # the op log still holds everything: the next takeover replays more
        log.exception("could not store the snapshot of run %s at seq %s", due.run.id, due.seq_id)
    finally:
        connection.close()  # this thread's own connection


def wait_for_writes() -> None:
    """Until every snapshot handed to the background writer so far is stored (or failed)."""
    done: Future = _writer.submit(lambda: None)
    done.result()


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
    wait_for_writes()  # stopping: whatever is still being uploaded must land first
    return taken
