"""JSON shapes of resources (TINKER_WIRE.md §6)."""

from __future__ import annotations

from training.models import Checkpoint, Operation, TrainingRun


def future_handle(op: Operation, **extra) -> dict:
    handle = {"request_id": op.id}
    if op.training_run_id:
        handle["model_id"] = op.training_run_id
    handle.update(extra)
    return handle


def training_run(run: TrainingRun) -> dict:
    """Pass runs from `TrainingRun.objects.with_latest_checkpoints()` to list them without N+1."""
    newest = getattr(run, "checkpoints_newest_first", None)
    if newest is None:
        newest = list(run.checkpoints.unexpired().order_by("-created_at"))
    last = {
        kind: next((c for c in newest if c.checkpoint_type == kind), None)
        for kind in (Checkpoint.Type.TRAINING, Checkpoint.Type.SAMPLER)
    }
    return {
        "training_run_id": run.id,
        "base_model": run.base_model,
        "model_owner": run.owner.username,
        "is_lora": True,
        "lora_rank": run.rank,
        "corrupted": False,
        "last_request_time": run.last_request_at.isoformat(),
        "user_metadata": run.user_metadata or None,
        "last_checkpoint": _maybe_checkpoint(last[Checkpoint.Type.TRAINING]),
        "last_sampler_checkpoint": _maybe_checkpoint(last[Checkpoint.Type.SAMPLER]),
        "step": run.step,
        # DESIGN §6: the runner holding the run's adapter (None until placed), and the last seq_id
        # its latest snapshot covers (None before its first)
        "runner": run.runner.describe() if run.runner is not None else None,
        "snapshot_seq_id": run.snapshot_seq_id(),
    }


def _maybe_checkpoint(ckpt: Checkpoint | None) -> dict | None:
    return checkpoint(ckpt) if ckpt is not None else None


def checkpoint(ckpt: Checkpoint) -> dict:
    return {
        "checkpoint_id": ckpt.checkpoint_id,
        "checkpoint_type": ckpt.checkpoint_type,
        "time": ckpt.created_at.isoformat(),
        "tinker_path": ckpt.tinker_path,
        "size_bytes": ckpt.size_bytes,
        "public": ckpt.public,
        "expires_at": ckpt.expires_at.isoformat() if ckpt.expires_at else None,
        "user_metadata": ckpt.user_metadata or None,
    }


def future_status(op: Operation) -> str | None:
    """The one rule for how a finished operation reads, for retrieve_future and the WebSocket push
    alike: "completed" when it is done, "failed" when it failed, was cancelled or was refused;
    None while it is pending."""
    if op.status == Operation.Status.DONE:
        return "completed"
    if op.status in Operation.FINISHED:
        return "failed"
    return None


def future_state(op: Operation) -> dict | None:
    """What retrieve_future (and the WebSocket push) answers for a finished op; None if pending."""
    status = future_status(op)
    if status == "completed":
        return op.result
    if status == "failed":
        return {"error": op.error or "cancelled", "category": op.error_category or "unknown"}
    return None
