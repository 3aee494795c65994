"""The one place that decides who may see what. Others' resources are 404, never 403."""
from __future__ import annotations

from django.db.models import Q

from .errors import NotFound
from .models import Checkpoint, Operation, SamplingSession, Session, TrainingRun


def session_of(user, session_id: str) -> Session:
    session = Session.objects.filter(id=session_id, owner=user).first()
    if session is None:
        raise NotFound(f"session {session_id!r} not found", field="session_id")
    return session


def training_run_of(user, model_id: str) -> TrainingRun:
    run = TrainingRun.objects.filter(id=model_id, owner=user).first()
    if run is None:
        raise NotFound(f"model {model_id!r} not found", field="model_id")
    return run


def sampling_session_of(user, sampling_session_id: str) -> SamplingSession:
    sampler = SamplingSession.objects.filter(id=sampling_session_id, owner=user).first()
    if sampler is None:
        raise NotFound(f"sampling session {sampling_session_id!r} not found", field="sampling_session_id")
    return sampler


def operation_of(user, request_id: str) -> Operation:
    op = Operation.objects.filter(id=request_id, owner=user).first()
    if op is None:
        raise NotFound(f"future {request_id!r} not found", field="request_id")
    return op


def readable_checkpoints(user):
    """Checkpoints a user may read, sample from or download: their own, and published ones."""
    return Checkpoint.objects.filter(Q(owner=user) | Q(public=True))


def owned_checkpoint(user, run_id: str, checkpoint_id: str) -> Checkpoint:
    return _find_checkpoint(Checkpoint.objects.filter(owner=user), run_id, checkpoint_id)


def readable_checkpoint(user, run_id: str, checkpoint_id: str) -> Checkpoint:
    return _find_checkpoint(readable_checkpoints(user), run_id, checkpoint_id)


def _find_checkpoint(queryset, run_id: str, checkpoint_id: str) -> Checkpoint:
    segment, _, name = checkpoint_id.partition("/")
    kinds = {v: k for k, v in Checkpoint.SEGMENTS.items()}
    checkpoint = None
    if segment in kinds and name:
        checkpoint = queryset.filter(training_run_id=run_id, checkpoint_type=kinds[segment], name=name).first()
    if checkpoint is None:
        raise NotFound(f"checkpoint {checkpoint_id!r} of run {run_id!r} not found", field="checkpoint_id")
    return checkpoint
