"""Planning: what each operation of a cycle asks of the engine.

Every operation becomes a `Plan`: the engine op, helper ops that must run before it in the same
cycle (a sampler's adapter import; rebuilding a model the engine lost or holds a stale copy of:
`restore`), and the finish step that turns the engine's output into the future's result.
Planning has no side effects on the engine: it only reads it (`has_adapter`) and the op log, so
all engine work of a cycle is in its one batch, and a plan that fails leaves nothing behind.
`engine_op` is the one converter from an op-log row to an engine op, shared by planning and by
`restore` (replay).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpu_runner import Engine
from gpu_runner.errors import EngineInputError
from gpu_runner.types import (
    CreateAdapter,
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
class Restore:
    """A model rebuilt by a plan's helpers: from its snapshot at `snapshot_seq` (None: its seed),
    then `replayed` logged operations."""

    run_id: str
    snapshot_seq: int | None
    replayed: int

    def log_done(self) -> None:
        """Said once the cycle rebuilt the model (the takeover tests read this line)."""
        source = f"its snapshot at seq {self.snapshot_seq}" if self.snapshot_seq is not None else "its seed"
        log.info("restored run %s from %s, replaying %d operations", self.run_id, source, self.replayed)


@dataclass
class Plan:
    op: Operation
    engine_op: EngineOp
    finish: Callable[[Any], dict]  # engine output -> the future's result JSON
    helpers: list[EngineOp] = field(default_factory=list)  # run before engine_op; no future of their own
    restoring: Restore | None = None  # the helpers rebuild the op's model first


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


def plan(engine: Engine, op: Operation, imported: set[str], built_under: dict[str, int] | None = None) -> Plan:
    """`imported`: adapters that earlier plans of this cycle bring into existence (a sampler's
    import, a model's creation or load, a restore); a later plan needing one adds no helper.
    `built_under`: per run, the placement under which this engine's copy of its adapter was (or,
    by this cycle, will be) built; a copy built under an older placement is stale: the run trained
    elsewhere meanwhile."""
    if op.kind == "sample":
        return _plan_sample(engine, op, imported)
    run = op.require_run()
    built = built_under if built_under is not None else {}
    if op.kind in ("create_model", "load_weights"):  # either makes the adapter anew
        made = (
            Plan(op, CreateAdapter(run.id, adapter_spec(run)), lambda out: {"model_id": run.id, "type": "create_model"})
            if op.kind == "create_model"
            else Plan(op, engine_op(op), _loaded(op.payload["path"], run.id))
        )
        imported.add(run.id)
        built[run.id] = run.placement_epoch
        return made
    if op.kind == "forward_backward":
        test_hooks.fail_before_forward_backward(run.user_metadata)
        pass_ = engine_op(op)
        assert isinstance(pass_, ForwardBackward)
        planned = Plan(op, pass_, lambda out: outcomes.forward_backward_done(op, pass_, out))
    elif op.kind == "optim_step":
        planned = Plan(op, engine_op(op), lambda out: outcomes.optim_step_done(op, out))
    elif op.kind in Checkpoint.SAVED_BY:
        planned = _plan_save(op, run)
    else:
        raise RuntimeError(f"unknown operation kind {op.kind!r}")
    current = engine.has_adapter(run.id) and built.get(run.id, run.placement_epoch) == run.placement_epoch
    if run.id not in imported and not current:  # lost, or stale (built before the run moved away and back)
        planned.helpers, planned.restoring = restore(run)
        imported.add(run.id)
        built[run.id] = run.placement_epoch
    return planned


def _loaded(path: str, model_id: str) -> Callable[[Any], dict]:
    return lambda out: {"path": path, "model_id": model_id, "type": "load_weights"}


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


def restore(run: TrainingRun) -> tuple[list[EngineOp], Restore]:
    """The engine ops that rebuild a model the engine lost (runner restart or takeover, dropped
    while idle, a failed cycle) or holds a stale copy of: its latest snapshot (adapter + optimizer)
    if it has one, else a fresh adapter from its seed; then the logged training operations after
    it that finished, in order (DESIGN §6). The first op always (re)creates the adapter, so a stale
    copy is replaced. The cycle runs them before the operation that needs the model."""
    snapshot = run.snapshots.order_by("-seq_id").first()
    done = run.operations.filter(status=Operation.Status.DONE).order_by("seq_id")
    ops: list[EngineOp] = []
    replayed = 0
    if snapshot is not None:
        done = done.filter(seq_id__gt=snapshot.seq_id)
        ops.append(LoadState(run.id, storage.fetch(snapshot.directory), include_optimizer=True))
    for op in done:
        if op.kind == "create_model":
            ops.append(CreateAdapter(run.id, adapter_spec(run)))
        elif op.kind in ("load_weights", "optim_step") or (
            op.kind == "forward_backward" and not op.payload["forward_only"]
        ):
            ops.append(engine_op(op))
            replayed += 1
    if not ops or not isinstance(ops[0], (CreateAdapter, LoadState)):
        ops.insert(0, CreateAdapter(run.id, adapter_spec(run)))
    return ops, Restore(run.id, snapshot.seq_id if snapshot is not None else None, replayed)
