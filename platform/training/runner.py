"""Executing one cycle on the runner: operations -> engine ops -> results in the op log.

Each operation's outcome is written where it belongs (result or error + category), metrics are
recorded and pushed, and the dispatcher is called again so the next cycle starts at once.
A failure converting or executing one operation fails that operation only.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from gpu_runner.errors import EngineInputError
from gpu_runner.types import (
    ExportPeft,
    ForwardBackward,
    ImportPeft,
    LoadState,
    LoraSpec,
    OpResult,
    OptimStep,
    Sample,
    SaveState,
)

from . import dispatch, events, housekeeping, retention, storage, wire
from .engines import engine_for
from .models import Checkpoint, MetricPoint, Operation, SamplingSession, TrainingRun

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """An operation waiting for its engine result; `finish` turns that result into wire JSON."""

    op: Operation
    finish: Callable[[object], dict]


def execute_cycle(base_model: str, cycle_id: str, op_ids: list[str]) -> None:
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
            if op.training_run_id:
                op.training_run = runs.setdefault(op.training_run_id, op.training_run)
        if ops:
            _run(base_model, ops)
    except Exception as error:  # noqa: BLE001 - whatever happens, no future may hang
        log.error("cycle %s failed: %s\n%s", cycle_id, error, traceback.format_exc())
        for op in Operation.objects.filter(cycle_id=cycle_id, status=Operation.Status.RUNNING):
            _fail(op, f"runner failure: {type(error).__name__}: {error}", "server")
    finally:
        dispatch.release_slot(base_model, cycle_id)
        dispatch.dispatch(base_model)
        housekeeping.run_if_due()


def adapter_spec(run: TrainingRun) -> LoraSpec:
    return LoraSpec(
        rank=run.rank,
        alpha=run.alpha,
        seed=run.seed,
        train_attn=run.train_attn,
        train_mlp=run.train_mlp,
        train_unembed=run.train_unembed,
    )


def _run(base_model: str, ops: list[Operation]) -> None:
    engine = engine_for(base_model)
    engine_ops, pending = [], []
    imported: set[str] = set()
    for op in ops:
        try:
            built = _plan(engine, op, imported)
        except EngineInputError as error:
            _fail(op, str(error), "user")
            continue
        except Exception as error:  # noqa: BLE001
            log.error("operation %s could not start: %s", op.id, traceback.format_exc())
            _fail(op, f"{type(error).__name__}: {error}", "server")
            continue
        if isinstance(built, dict):  # finished without the engine's cycle
            _complete(op, built)
            continue
        for engine_op in built[:-1]:
            engine_ops.append(engine_op)
            pending.append(None)  # helper ops (imports) have no future of their own
        engine_ops.append(built[-1][0])
        pending.append(Pending(op, built[-1][1]))
    if not engine_ops:
        return
    try:
        results = engine.run_cycle(engine_ops)
        _maybe_force_cycle_failure([item.op for item in pending if item is not None])
    except Exception as error:  # noqa: BLE001 - the cycle's futures fail; the runner goes on
        log.error("engine cycle failed: %s", traceback.format_exc())
        _forget_adapters(engine, engine_ops)
        message = f"runner failure during the cycle: {type(error).__name__}: {error}"
        for item in pending:
            if item is not None:
                _fail(item.op, message, "server")
        return
    for item, result in zip(pending, results):
        if item is None:
            continue
        _record(item, result)


def _forget_adapters(engine, engine_ops: list) -> None:
    """After a cycle died part-way, its adapters' state is unknown (half-accumulated gradients, a
    step applied or not): drop them, so the next request rebuilds each from the op log's finished
    operations (`_restore`) and the failed ones leave no trace."""
    for adapter_id in {getattr(o, "adapter_id", None) for o in engine_ops} - {None}:
        try:
            if engine.has_adapter(adapter_id):
                engine.remove_adapter(adapter_id)
        except Exception:
            log.exception("could not drop adapter %s", adapter_id)


def _maybe_force_cycle_failure(ops: list[Operation]) -> None:
    """Test hook (LORASMITH_TEST_HOOKS=1): a run whose user_metadata names `force_cycle_failure_seq`
    makes the cycle holding that seq raise after the engine ran it, as a crash mid-cycle would."""
    if not settings.LORASMITH["TEST_HOOKS"]:
        return
    for op in ops:
        run = op.training_run
        if run is not None and str(run.user_metadata.get("force_cycle_failure_seq")) == str(op.seq_id):
            raise RuntimeError(f"forced cycle failure at seq {op.seq_id} (test hook)")


def _record(item: Pending, result: OpResult) -> None:
    if not result.ok:
        _fail(item.op, result.error, result.category or "server")
        return
    try:
        _complete(item.op, item.finish(result.output))
    except Exception as error:  # noqa: BLE001
        log.error("writing result of %s failed: %s", item.op.id, traceback.format_exc())
        _fail(item.op, f"{type(error).__name__}: {error}", "server")


def _plan(engine, op: Operation, imported: set[str]):
    """An operation's engine work: a finished result dict, or [helper ops..., (engine_op, finish)]."""
    run: TrainingRun | None = op.training_run
    payload = op.payload
    if (
        op.kind == "forward_backward"
        and settings.LORASMITH["TEST_HOOKS"]
        and run.user_metadata.get("force_runner_failure")
    ):
        raise RuntimeError("forced runner failure (test hook)")
    if op.kind == "create_model":
        engine.create_adapter(run.id, adapter_spec(run))
        return {"model_id": run.id, "type": "create_model"}
    if op.kind == "sample":
        return _plan_sample(engine, op, imported)
    if op.kind == "load_weights":
        directory = Path(payload["directory"])
        return [
            (
                LoadState(run.id, directory, include_optimizer=payload["optimizer"]),
                lambda out: {"path": payload["path"], "model_id": run.id, "type": "load_weights"},
            )
        ]
    if not engine.has_adapter(run.id):
        _restore(engine, run)
    if op.kind == "forward_backward":
        data = [wire.datum(d, i) for i, d in enumerate(payload["data"])]
        fb = ForwardBackward(run.id, data, payload["loss_fn"], payload["loss_fn_config"], payload["forward_only"])
        return [(fb, lambda out: _after_forward_backward(op, out))]
    if op.kind == "optim_step":
        return [(OptimStep(run.id, wire.adam_params(payload)), lambda out: _after_optim_step(op, out))]
    if op.kind in ("save_weights", "save_weights_for_sampler", "save_weights_external"):
        return [_plan_save(op)]
    raise RuntimeError(f"unknown operation kind {op.kind!r}")


def _plan_sample(engine, op: Operation, imported: set[str]):
    sampler: SamplingSession = op.sampling_session
    payload = op.payload
    helpers = []
    adapter_id = None
    if sampler.weights_dir:
        adapter_id = sampler.id
        if not engine.has_adapter(adapter_id) and not Path(sampler.weights_dir).is_dir():
            raise EngineInputError(
                f"the weights of sampling session {sampler.id} are no longer kept "
                "(released while this request was queued)",
                field="sampling_session_id",
            )
        if not engine.has_adapter(adapter_id) and adapter_id not in imported:
            helpers.append(ImportPeft(adapter_id, Path(sampler.weights_dir)))
            imported.add(adapter_id)
    sample = Sample(
        adapter_id,
        payload["prompt"],
        payload["num_samples"],
        wire.sampling_params(payload["sampling_params"]),
        payload["prompt_logprobs"],
        payload["topk_prompt_logprobs"],
    )
    last_n = payload.get("prompt_logprobs_last_n")
    return helpers + [(sample, lambda out: {**wire.sample_json(out, last_n), "type": "sample"})]


def _plan_save(op: Operation):
    run = op.training_run
    payload = op.payload
    name = payload.get("name")
    if op.kind == "save_weights":
        directory = storage.checkpoint_directory(op.owner_id, run.id, "weights", name)
        return (
            SaveState(run.id, directory, include_optimizer=True),
            lambda out: _checkpoint_saved(op, "training", name, out),
        )
    if op.kind == "save_weights_external":
        directory = storage.checkpoint_directory(op.owner_id, run.id, "external_weights", name)
        return (ExportPeft(run.id, directory), lambda out: _checkpoint_saved(op, "external", name, out))
    if name:
        directory = storage.checkpoint_directory(op.owner_id, run.id, "sampler_weights", name)
        return (ExportPeft(run.id, directory), lambda out: _checkpoint_saved(op, "sampler", name, out))
    directory = storage.internal_sampler_directory(op.owner_id, run.id, op.seq_id)
    return (ExportPeft(run.id, directory), lambda out: _ephemeral_sampler(op, out))


def _checkpoint_saved(op: Operation, kind: str, name: str, out) -> dict:
    storage.discard_archive(out.directory)  # an overwrite must not leave the old weights' .tar behind
    ttl = op.payload.get("ttl_seconds")
    checkpoint, _ = Checkpoint.objects.update_or_create(
        training_run=op.training_run,
        checkpoint_type=kind,
        name=name,
        defaults={
            "owner_id": op.owner_id,
            "directory": str(out.directory),
            "size_bytes": out.size_bytes,
            "user_metadata": op.payload.get("user_metadata") or {},
            "expires_at": timezone.now() + timezone.timedelta(seconds=ttl) if ttl else None,
        },
    )
    result = {"path": checkpoint.tinker_path, "type": op.kind}
    if kind == "external":
        result["size_bytes"] = out.size_bytes
    return result


def _ephemeral_sampler(op: Operation, out) -> dict:
    run = op.training_run
    seq = op.payload.get("sampling_session_seq_id")
    sampler_id = f"{run.session_id}:sample:{seq if seq is not None else op.id}"
    SamplingSession.objects.update_or_create(
        id=sampler_id,
        defaults={
            "session_id": run.session_id,
            "owner_id": op.owner_id,
            "base_model": run.base_model,
            "weights_dir": str(out.directory),
            "model_path": "",
            "released_at": None,
        },
    )
    retention.release_ephemeral_weights(Path(out.directory).parent, settings.LORASMITH["EPHEMERAL_SAMPLERS_KEPT"])
    return {"path": None, "sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}


def _after_forward_backward(op: Operation, out) -> dict:
    run = op.training_run
    if not op.payload["forward_only"]:
        _metrics(run, run.step, {"loss:sum": out.metrics["loss:sum"]})
    return {**wire.forward_backward_json(out), "type": "forward_backward"}


def _after_optim_step(op: Operation, out) -> dict:
    run = op.training_run
    TrainingRun.objects.filter(pk=run.pk).update(step=run.step + 1)
    run.step += 1
    _metrics(run, run.step, out.metrics)
    return {"metrics": out.metrics, "type": "optim_step"}


def _metrics(run: TrainingRun, step: int, values: dict) -> None:
    MetricPoint.objects.bulk_create(
        [MetricPoint(training_run=run, step=step, name=k, value=float(v)) for k, v in values.items()]
    )
    events.metrics(run.owner_id, run.id, step, values)


def _restore(engine, run: TrainingRun) -> None:
    """Rebuild an adapter the engine lost (runner restart): same seed, then replay the logged
    training operations in order (DESIGN §6)."""
    done = list(run.operations.filter(status=Operation.Status.DONE).order_by("seq_id"))
    replay = []
    for op in done:
        if op.kind == "create_model":
            engine.create_adapter(run.id, adapter_spec(run))
        elif op.kind == "load_weights":
            replay.append(LoadState(run.id, Path(op.payload["directory"]), op.payload["optimizer"]))
        elif op.kind == "forward_backward" and not op.payload["forward_only"]:
            replay.append(
                ForwardBackward(
                    run.id,
                    [wire.datum(d, i) for i, d in enumerate(op.payload["data"])],
                    op.payload["loss_fn"],
                    op.payload["loss_fn_config"],
                )
            )
        elif op.kind == "optim_step":
            replay.append(OptimStep(run.id, wire.adam_params(op.payload)))
    if not engine.has_adapter(run.id) and not any(isinstance(o, LoadState) for o in replay):
        engine.create_adapter(run.id, adapter_spec(run))
    failed = [r.error for r in engine.run_cycle(replay) if not r.ok] if replay else []
    if failed:
        raise RuntimeError(f"could not restore model {run.id}: {failed[0]}")


def _complete(op: Operation, result: dict) -> None:
    with transaction.atomic():
        Operation.objects.filter(pk=op.pk).update(
            status=Operation.Status.DONE, result=result, finished_at=timezone.now()
        )
    events.future_finished(op.owner_id, op.id)


def _fail(op: Operation, message: str, category: str) -> None:
    Operation.objects.filter(pk=op.pk).update(
        status=Operation.Status.FAILED, error=message, error_category=category, finished_at=timezone.now()
    )
    events.future_finished(op.owner_id, op.id)
