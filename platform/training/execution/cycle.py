"""Executing one cycle on the runner: operations -> plans -> one engine batch -> outcomes.

Each operation's outcome is written where it belongs (result or error + category), and the
dispatcher is called again so the next cycle starts at once. A failure planning or executing one
operation fails that operation only; whatever happens, no future is left hanging.
"""

from __future__ import annotations

import logging

from django.db import transaction

from gpu_runner import Engine
from gpu_runner.errors import EngineInputError
from gpu_runner.types import EngineOp, OpResult

from .. import dispatch, runners, test_hooks
from ..models import Checkpoint, Operation, Runner, TrainingRun
from ..upkeep import housekeeping
from . import outcomes, snapshots
from .engines import Resident, record_heartbeat, release_idle_adapters, resident_for, resident_if_loaded
from .plan import Plan, plan

log = logging.getLogger(__name__)


_running: dict[str, str] = {}  # runner id -> the cycle this process is running for it now


def running_cycle(runner_id: str) -> str | None:
    """The cycle this process is executing for `runner_id`, if any (read by the heartbeat thread)."""
    return _running.get(runner_id)


def execute_cycle(runner_id: str, epoch: int, cycle_id: str, op_ids: list[str]) -> None:
    runner = Runner.objects.filter(pk=runner_id, epoch=epoch, state=Runner.State.LIVE).first()
    if runner is None:  # fenced: the runner was declared dead since; its work was re-queued
        log.warning("cycle %s of runner %s at epoch %s is stale: nothing done", cycle_id, runner_id, epoch)
        return
    _running[runner_id] = cycle_id
    try:
        _execute(runner, cycle_id, op_ids)
    finally:
        _running.pop(runner_id, None)


def _execute(runner: Runner, cycle_id: str, op_ids: list[str]) -> None:
    try:
        # only operations this cycle still owns: a re-queued cycle's stale message does nothing
        ops = list(
            Operation.objects.filter(id__in=op_ids, cycle_id=cycle_id, status=Operation.Status.RUNNING).select_related(
                "training_run", "sampling_session"
            )
        )
        ops.sort(key=lambda o: (o.training_run_id or "", o.seq_id, o.created_at))
        runs: dict[str, TrainingRun] = {}
        for op in ops:  # one instance per model, so step counts carry across its ops in this cycle
            if op.training_run is not None:
                op.training_run = runs.setdefault(op.training_run.id, op.training_run)
        if ops:
            _run(runner, resident_for(runner), ops)
    except Exception as error:
        log.exception("cycle %s failed", cycle_id)
        for op in Operation.objects.filter(cycle_id=cycle_id, status=Operation.Status.RUNNING):
            outcomes.fail(op, f"runner failure: {type(error).__name__}: {error}", "server")
    finally:
        dispatch.release_slot(runner.id, cycle_id)
        dispatch.dispatch(runner.base_model)
        housekeeping.run_if_due(also=[release_idle_adapters])
        _heartbeat(runner)


_reported: dict[str, str] = {}  # runner id -> the memory report last written for it


def _heartbeat(runner: Runner) -> None:
    """The overview's row of what the runner holds, written only when that changed (the heartbeat
    thread keeps the row fresh meanwhile): two queries saved on most cycles."""
    resident = resident_if_loaded(runner.id)
    report = repr(resident.engine.memory_report()) if resident is not None else ""
    if _reported.get(runner.id) == report:
        return
    try:
        record_heartbeat(runner)
        _reported[runner.id] = report
    except Exception:  # the overview's view of this runner goes stale; the cycle itself is done
        log.exception("could not record the runner's heartbeat")


def _run(runner: Runner, resident: Resident, ops: list[Operation]) -> None:
    engine = resident.engine
    plans = _plan_all(resident, ops)
    if not plans:
        return
    batch: list[EngineOp] = []
    owners: list[Plan | None] = []  # per engine op: the plan whose future it answers (None: a helper)
    helped: list[Plan | None] = []  # per engine op: the plan a helper prepares (None: not a helper)
    steps: dict[str, int] = {}
    due: list[tuple[int, snapshots.Due]] = []  # a snapshot right after the step at this batch index
    for item in plans:
        batch.extend(item.helpers)
        owners.extend([None] * len(item.helpers))
        helped.extend([item] * len(item.helpers))
        batch.append(item.engine_op)
        owners.append(item)
        helped.append(None)
        snapshot = snapshots.due_after(item.op, steps)
        if snapshot is not None:
            due.append((len(batch) - 1, snapshot))
            batch.append(snapshot.save)
            owners.append(None)
            helped.append(None)
    try:
        results = engine.run_cycle(batch)
        test_hooks.fail_after_cycle(
            [(p.op.training_run.user_metadata, p.op.seq_id) for p in plans if p.op.training_run is not None]
        )
    except Exception as error:
        log.exception("engine cycle failed")
        _forget_adapters(engine, batch)
        for item in plans:
            outcomes.fail(item.op, f"runner failure during the cycle: {type(error).__name__}: {error}", "server")
        return
    if not runners.is_current(runner.id, runner.epoch):
        # declared dead while the cycle ran (it stalled): its runs moved and its operations were
        # re-queued, so nothing of this cycle may be written, and its adapters are stale
        log.warning("runner %s lost its runs during cycle; its results are dropped", runner.id)
        _forget_adapters(engine, batch)
        return
    broken = _unprepared(batch, helped, results)
    if broken:  # their adapters' state is unknown: rebuilt from the op log when next needed
        _forget_adapters(engine, [o for o in batch if o.adapter_id in broken])
    _record_all([(owner, result) for owner, result in zip(owners, results) if owner is not None], broken)
    for item in plans:
        if item.restoring is not None and item.engine_op.adapter_id not in broken:
            item.restoring.log_done()
    for step_index, snapshot in due:
        if snapshot.run.id in broken:
            continue
        if results[step_index].ok and results[step_index + 1].ok:
            try:
                snapshots.record(snapshot)
            except Exception:  # the op log still holds everything: the next takeover replays more
                log.exception("could not record the snapshot of run %s", snapshot.run.id)


def _plan_all(resident: Resident, ops: list[Operation]) -> list[Plan]:
    """The operations' plans; one that cannot be planned is failed here."""
    plans: list[Plan] = []
    imported: set[str] = set()
    for op in ops:
        try:
            plans.append(plan(resident.engine, op, imported, resident.built_under))
        except EngineInputError as error:
            outcomes.fail(op, str(error), "user")
        except Exception as error:
            log.exception("operation %s could not start", op.id)
            outcomes.fail(op, f"{type(error).__name__}: {error}", "server")
    return plans


def _unprepared(
    batch: list[EngineOp], helped: list[Plan | None], results: list[OpResult]
) -> dict[str | None, tuple[str, str]]:
    """Adapters a helper failed to prepare (a restore's replay, a sampler's import), each with the
    error (message, category) that every operation of this cycle on it fails with: they ran on an
    adapter that is missing or half rebuilt."""
    broken: dict[str | None, tuple[str, str]] = {}
    for op, item, result in zip(batch, helped, results):
        if item is None or result.ok or op.adapter_id in broken:
            continue
        error = result.error or "unknown engine error"
        if item.restoring is not None:
            broken[op.adapter_id] = (f"could not restore model {op.adapter_id}: {error}", "server")
        else:
            broken[op.adapter_id] = (error, result.category or "server")
    return broken


def _forget_adapters(engine: Engine, batch: list[EngineOp]) -> None:
    """After a cycle died part-way, its adapters' state is unknown (half-accumulated gradients, a
    step applied or not): drop them, so the next request rebuilds each from the op log's finished
    operations (`plan.restore`) and the failed ones leave no trace."""
    for adapter_id in {o.adapter_id for o in batch if o.adapter_id is not None}:
        try:
            if engine.has_adapter(adapter_id):
                engine.remove_adapter(adapter_id)
        except Exception:
            log.exception("could not drop adapter %s", adapter_id)


def _record_all(done: list[tuple[Plan, OpResult]], broken: dict[str | None, tuple[str, str]]) -> None:
    """The cycle's outcomes, in order, in as few transactions as can be: one commit for a run of
    operations, not one each (a commit is a disk flush on PostgreSQL). A save's outcome uploads to
    the store first, so it is written alone: no transaction stays open over an upload."""
    batch: list[tuple[Plan, OpResult]] = []
    for item, result in done:
        if item.op.kind not in Checkpoint.SAVED_BY:
            batch.append((item, result))
            continue
        _record_batch(batch, broken)
        batch = []
        _record(item, result, broken)
    _record_batch(batch, broken)


def _record_batch(batch: list[tuple[Plan, OpResult]], broken: dict[str | None, tuple[str, str]]) -> None:
    if not batch:
        return
    with transaction.atomic():
        for item, result in batch:
            _record(item, result, broken)


def _record(item: Plan, result: OpResult, broken: dict[str | None, tuple[str, str]]) -> None:
    failure = broken.get(item.engine_op.adapter_id)
    if failure is not None:
        outcomes.fail(item.op, *failure)
        return
    if not result.ok:
        outcomes.fail(item.op, result.error or "unknown engine error", result.category or "server")
        return
    run = item.op.training_run
    step = run.step if run is not None else 0
    try:
        with transaction.atomic():  # a savepoint: a failure writing this outcome undoes only its own writes
            outcomes.complete(item.op, item.finish(result.output))
    except Exception as error:
        log.exception("writing the result of %s failed", item.op.id)
        if run is not None:  # the cycle's one instance of the run: its step's write was undone, so is its count
            run.step = step
        outcomes.fail(item.op, f"{type(error).__name__}: {error}", "server")
