"""The one place that decides who may see what. Others' resources are 404, never 403."""

from __future__ import annotations

from django.db.models import Q

from .errors import BadRequest, NotFound
from .models import Checkpoint, Operation, SamplingSession, Session, TrainingRun


def _owned(model, user, object_id: str, label: str, field: str):
    found = model.objects.filter(id=object_id, owner=user).first()
    if found is None:
        raise NotFound(f"{label} {object_id!r} not found", field=field)
    return found


def session_of(user, session_id: str) -> Session:
    return _owned(Session, user, session_id, "session", "session_id")


def training_run_of(user, model_id: str) -> TrainingRun:
    return _owned(TrainingRun, user, model_id, "model", "model_id")


def sampling_session_of(user, sampling_session_id: str) -> SamplingSession:
    return _owned(SamplingSession, user, sampling_session_id, "sampling session", "sampling_session_id")


def operation_of(user, request_id: str) -> Operation:
    return _owned(Operation, user, request_id, "future", "request_id")


LOOKUP_BATCH = 500  # ids per query (SQLite allows few parameters per statement)


def operations_of(user, request_ids: list[str]) -> dict[str, Operation]:
    """The user's operations among `request_ids`, by id, a query per LOOKUP_BATCH (others' are absent)."""
    found: dict[str, Operation] = {}
    for start in range(0, len(request_ids), LOOKUP_BATCH):
        batch = request_ids[start : start + LOOKUP_BATCH]
        found.update((op.id, op) for op in Operation.objects.filter(id__in=batch, owner=user))
    return found


def owns_run(user, model_id: str) -> bool:
    return TrainingRun.objects.filter(id=model_id, owner=user).exists()


def readable_checkpoints(user):
    """Checkpoints a user may read, sample from or download: their own, and published ones."""
    return Checkpoint.objects.filter(Q(owner=user) | Q(public=True))


def owned_checkpoint(user, run_id: str, checkpoint_id: str) -> Checkpoint:
    return _find_checkpoint(Checkpoint.objects.filter(owner=user), run_id, checkpoint_id)


def readable_checkpoint(user, run_id: str, checkpoint_id: str) -> Checkpoint:
    return _find_checkpoint(readable_checkpoints(user), run_id, checkpoint_id)


def downloadable_checkpoint(user, run_id: str, checkpoint_id: str) -> Checkpoint:
    """Sampler and external checkpoints download; training state (with optimizer) does not."""
    checkpoint = readable_checkpoint(user, run_id, checkpoint_id)
    if checkpoint.checkpoint_type == Checkpoint.Type.TRAINING:
        raise BadRequest(
            "training checkpoints are not downloadable; export with save_weights_external", field="checkpoint_id"
        )
    return checkpoint


def _find_checkpoint(queryset, run_id: str, checkpoint_id: str) -> Checkpoint:
    split = Checkpoint.split_id(checkpoint_id)
    checkpoint = None
    if split is not None:
        kind, name = split
        checkpoint = queryset.unexpired().filter(training_run_id=run_id, checkpoint_type=kind, name=name).first()
    if checkpoint is None:
        raise NotFound(f"checkpoint {checkpoint_id!r} of run {run_id!r} not found", field="checkpoint_id")
    return checkpoint
