"""Writing an operation's outcome to the op log: its result or its error (+ who is to blame), the
resources it made (checkpoints, ephemeral samplers, metrics), what it consumed (`usage`), and the
push that it finished.

Pushes go out after the row is committed, so a client woken by one always finds the result.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.db import transaction

from gpu_runner.types import CheckpointOutput, ForwardBackward, ForwardBackwardOutput, OptimStepOutput

from .. import exports, run_metrics, storage, wire
from ..models import Checkpoint, Operation, SamplingSession, TrainingRun
from ..upkeep import retention


def _still_ours(op: Operation):
    """The op's row only while its cycle still holds it: once a takeover re-queued it (its runner
    was declared dead), a late outcome of the old cycle writes nothing and resolves no future."""
    return Operation.objects.filter(pk=op.pk, status=Operation.Status.RUNNING, cycle_id=op.cycle_id)


def complete(op: Operation, result: dict) -> None:
    """Its result and what it consumed are stored together, or neither (`OperationQuerySet.finish`)."""
    _still_ours(op).finish(Operation.Status.DONE, result=result, known=op)


def fail(op: Operation, message: str, category: str) -> None:
    _still_ours(op).finish(Operation.Status.FAILED, error=message, category=category, known=op)


def checkpoint_saved(op: Operation, out: CheckpointOutput) -> dict:
    """A named save finished: its Checkpoint row (replacing an overwritten one) and its path."""
    kind = Checkpoint.SAVED_BY[op.kind]
    exports.name_served_base_model(out.directory, op.require_run().base_model)
    location = storage.publish(out.directory, archive=kind != Checkpoint.Type.TRAINING)  # before the row names it
    identity = {"training_run": op.training_run, "checkpoint_type": kind, "name": op.payload["name"]}
    replaced = Checkpoint.objects.filter(**identity).values_list("directory", flat=True).first()
    checkpoint, _ = Checkpoint.objects.update_or_create(
        **identity,
        defaults={
            "owner_id": op.owner_id,
            "directory": location,
            "size_bytes": out.size_bytes,
            "user_metadata": op.payload.get("user_metadata") or {},
            "expires_at": Checkpoint.expiry(op.payload.get("ttl_seconds")),
        },
    )
    if replaced is not None:  # an overwrite: samplers on the checkpoint follow it to the new version
        SamplingSession.objects.filter(weights_dir=replaced).update(weights_dir=location)
    transaction.on_commit(lambda: storage.drop_replaced(replaced or location, location))
    result: dict = {"path": checkpoint.tinker_path, "type": op.kind}
    if kind == Checkpoint.Type.EXTERNAL:
        result["size_bytes"] = out.size_bytes
    return result


def ephemeral_sampler(op: Operation, out: CheckpointOutput) -> dict:
    """An unnamed save_weights_for_sampler finished: a sampling session on the snapshot; older
    snapshots of the run beyond the kept count are released."""
    run = op.require_run()
    exports.name_served_base_model(out.directory, run.base_model)
    location = storage.publish(out.directory)
    seq = op.payload.get("sampling_session_seq_id")
    sampler_id = SamplingSession.make_id(run.session_id, seq if seq is not None else op.id)
    SamplingSession.objects.update_or_create(
        id=sampler_id,
        defaults={
            "session_id": run.session_id,
            "owner_id": op.owner_id,
            "base_model": run.base_model,
            "weights_dir": location,
            "model_path": "",
            "released_at": None,
            "source_run_id": run.id,  # its samples (an RL loop's) count for the run in Usage
        },
    )
    retention.release_ephemeral_weights(Path(location).parent, settings.LORASMITH.ephemeral_samplers_kept)
    return {"path": None, "sampling_session_id": sampler_id, "type": "save_weights_for_sampler"}


def forward_backward_done(op: Operation, done: ForwardBackward, out: ForwardBackwardOutput) -> dict:
    """`done`: the engine op that ran (its data decoded once, by planning)."""
    run = op.require_run()
    if not done.forward_only:
        points = run_metrics.forward_backward_points(done.loss_fn, done.data, out.metrics["loss:sum"])
        run_metrics.record(run, run.step, points)
    return {**wire.forward_backward_json(out), "type": "forward_backward"}


def optim_step_done(op: Operation, out: OptimStepOutput) -> dict:
    run = op.require_run()
    TrainingRun.objects.filter(pk=run.pk).update(step=run.step + 1)
    run.step += 1  # the cycle shares one instance per run, so a second step in the cycle counts on
    run_metrics.record(run, run.step, out.metrics)
    return {"metrics": out.metrics, "type": "optim_step"}
