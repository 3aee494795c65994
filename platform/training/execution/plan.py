"""Planning: what each operation of a cycle asks of the engine.

An operation becomes either `Finished` (done while planning: a model's creation) or a `Plan`: the
engine op, helper ops that must run before it in the same cycle (a sampler's adapter import), and
the finish step that turns the engine's output into the future's result. `engine_op` is the one
converter from an op-log row to an engine op, shared by planning and by `restore` (replay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpu_runner import Engine
from gpu_runner.errors import EngineInputError
from gpu_runner.types import (
    EngineOp,
    ExportPeft,
    ForwardBackward,
    ImportPeft,
    LoadState,
    LoraSpec,
    OptimStep,
    Sample,
    SaveState,
)

from .. import storage, test_hooks, wire
from ..models import Checkpoint, Operation, SamplingSession, TrainingRun
from . import outcomes

log = logging.getLogger(__name__)


@dataclass
class Plan:
    op: Operation
    engine_op: EngineOp
    finish: Callable[[Any], dict]  # engine output -> the future's result JSON
    helpers: list[EngineOp] = field(default_factory=list)  # no future of their own


@dataclass
class Finished:
    op: Operation
    result: dict


def adapter_spec(run: TrainingRun) -> LoraSpec:
    return LoraSpec(**run.lora_config())


def engine_op(op: Operation) -> EngineOp:
    """The engine op of a logged training operation that changes an adapter (load, forward_backward,
    optim_step): what the cycle runs, and what `restore` replays."""
    run, payload = op.require_run(), op.payload
    if op.kind == "load_weights":
        return LoadState(run.id, storage.fetch(payload["directory"]), include_optimizer=payload["optimizer"])
    if op.kind == "forward_backward":
        data = [wire.datum(d, i) for i, d in enumerate(payload["data"])]
        return ForwardBackward(run.id, data, payload["loss_fn"], payload["loss_fn_config"], payload["forward_only"])
    if op.kind == "optim_step":
        return OptimStep(run.id, wire.adam_params(payload))
    raise ValueError(f"operation kind {op.kind!r} has no adapter-changing engine op")


def plan(
    engine: Engine, op: Operation, imported: set[str], built_under: dict[str, int] | None = None
) -> Plan | Finished:
    """`imported`: sampler adapters already imported by an earlier plan of this cycle.
    `built_under`: per run, the placement under which this engine built its adapter (a copy built
    under an older placement is stale: the run trained elsewhere meanwhile)."""
    if op.kind == "sample":
        return _plan_sample(engine, op, imported)
    run = op.require_run()
    built = built_under if built_under is not None else {}
    if op.kind == "create_model":
        engine.create_adapter(run.id, adapter_spec(run))
        built[run.id] = run.placement_epoch
        return Finished(op, {"model_id": run.id, "type": "create_model"})
    if op.kind == "load_weights":
        path = op.payload["path"]
        built[run.id] = run.placement_epoch
        return Plan(op, engine_op(op), lambda out: {"path": path, "model_id": run.id, "type": "load_weights"})
    if engine.has_adapter(run.id) and built.get(run.id, run.placement_epoch) != run.placement_epoch:
        engine.remove_adapter(run.id)  # stale: built before the run moved away and back
    if not engine.has_adapter(run.id):
        restore(engine, run)
        built[run.id] = run.placement_epoch
    if op.kind == "forward_backward":
        test_hooks.fail_before_forward_backward(run.user_metadata)
        return Plan(op, engine_op(op), lambda out: outcomes.forward_backward_done(op, out))
    if op.kind == "optim_step":
        return Plan(op, engine_op(op), lambda out: outcomes.optim_step_done(op, out))
    if op.kind in Checkpoint.SAVED_BY:
        return _plan_save(op, run)
    raise RuntimeError(f"unknown operation kind {op.kind!r}")


def _plan_sample(engine: Engine, op: Operation, imported: set[str]) -> Plan:
    sampler = op.sampling_session
    assert sampler is not None, f"sample {op.id} has no sampling session"
    payload = op.payload
    helpers: list[EngineOp] = []
    adapter_id = None
    if sampler.weights_dir:
        adapter_id = sampler.id
        if not engine.has_adapter(adapter_id) and adapter_id not in imported:
            _check_weights_kept(sampler)
            helpers.append(ImportPeft(adapter_id, storage.fetch(sampler.weights_dir)))
            imported.add(adapter_id)
    sample = Sample(
        adapter_id,
        payload["prompt"],
        payload["num_samples"],
        wire.sampling_params(payload["sampling_params"]),
        payload["prompt_logprobs"],
        payload["topk_prompt_logprobs"],
        payload.get("target_prompt_tokens"),
        payload.get("topk_sample_logprobs", 0),
    )
    last_n = payload.get("prompt_logprobs_last_n")
    return Plan(op, sample, lambda out: {**wire.sample_json(out, last_n), "type": "sample"}, helpers)


def _check_weights_kept(sampler: SamplingSession) -> None:
    if not storage.is_kept(sampler.weights_dir):
        raise EngineInputError(
            f"the weights of sampling session {sampler.id} are no longer kept (released while this request was queued)",
            field="sampling_session_id",
        )


def _plan_save(op: Operation, run: TrainingRun) -> Plan:
    name = op.payload.get("name")
    kind = Checkpoint.SAVED_BY[op.kind]
    if kind == Checkpoint.Type.SAMPLER and not name:  # an ephemeral snapshot for a sampling client
        directory = storage.ephemeral_sampler_directory(op.owner_id, run.id, op.seq_id)
        return Plan(op, ExportPeft(run.id, directory), lambda out: outcomes.ephemeral_sampler(op, out))
    directory = storage.checkpoint_directory(op.owner_id, run.id, Checkpoint.SEGMENTS[kind], name)
    save: EngineOp = (
        SaveState(run.id, directory, include_optimizer=True)
        if kind == Checkpoint.Type.TRAINING
        else ExportPeft(run.id, directory)
    )
    return Plan(op, save, lambda out: outcomes.checkpoint_saved(op, out))


def restore(engine: Engine, run: TrainingRun) -> int:
    """Rebuild an adapter the engine lost (runner restart or takeover, dropped while idle, a failed
    cycle): from the run's latest snapshot if it has one (adapter + optimizer), else from its seed;
    then the logged training operations after it that finished, replayed in order (DESIGN §6).
    Returns how many operations were replayed."""
    snapshot = run.snapshots.order_by("-seq_id").first()
    done = run.operations.filter(status=Operation.Status.DONE).order_by("seq_id")
    replay: list[EngineOp] = []
    if snapshot is not None:
        done = done.filter(seq_id__gt=snapshot.seq_id)
        replay.append(LoadState(run.id, storage.fetch(snapshot.directory), include_optimizer=True))
    for op in done:
        if op.kind == "create_model":
            engine.create_adapter(run.id, adapter_spec(run))
        elif op.kind in ("load_weights", "optim_step") or (
            op.kind == "forward_backward" and not op.payload["forward_only"]
        ):
            replay.append(engine_op(op))
    if not engine.has_adapter(run.id) and not any(isinstance(o, LoadState) for o in replay):
        engine.create_adapter(run.id, adapter_spec(run))
    failed = [r.error for r in engine.run_cycle(replay) if not r.ok] if replay else []
    if failed:
        raise RuntimeError(f"could not restore model {run.id}: {failed[0]}")
    replayed = len(replay) - (snapshot is not None)
    log.info(
        "restored run %s from %s, replaying %d operations",
        run.id,
        f"its snapshot at seq {snapshot.seq_id}" if snapshot is not None else "its seed",
        replayed,
    )
    return replayed
