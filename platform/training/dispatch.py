"""The dispatcher: per base model, at most one cycle in flight; a new one starts as soon as the
runner is free and something is ready (continuous batching, no clock).

Ready means: for each training model, its queued operations that continue its seq_id sequence
without a gap (early arrivals wait; a request rejected at the door fills its seq without running);
every queued sampling operation (they never wait for gaps).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import dramatiq
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .base_models import queue_name
from .models import DispatchSlot, Operation, TrainingRun

log = logging.getLogger(__name__)

# The message a cycle travels as, by name: the actor (`execution.actors`) imports dispatch, never
# the other way round. Its arguments: (base_model, cycle_id, op_ids).
CYCLE_ACTOR = "execute_cycle"
CYCLE_LIMIT = 64  # operations per cycle: keeps a cycle short so results stream back
STALE_CYCLE = timedelta(minutes=30)  # a runner that died mid-cycle frees its slot after this


def dispatch(base_model: str) -> None:
    """Start a cycle for `base_model` if none is in flight and work is ready."""
    for _ in range(3):  # bounded: a dispatcher racing us will pick up what we leave
        cycle_id = uuid.uuid4().hex
        if not _claim_slot(base_model, cycle_id):
            return
        op_ids = _take_ready(base_model, cycle_id)
        if op_ids:
            _send(base_model, cycle_id, op_ids)
            return
        release_slot(base_model, cycle_id)
        if not _ready(base_model)[0]:  # re-check: a submit may have landed while we held the slot
            return


def release_slot(base_model: str, cycle_id: str | None = None) -> None:
    """Free the slot; given a cycle id, only if that cycle still holds it (a stale message of a
    re-queued cycle must not free the slot of the cycle now in flight)."""
    slot = DispatchSlot.objects.filter(base_model=base_model)
    if cycle_id is not None:
        slot = slot.filter(cycle_id=cycle_id)
    slot.update(busy=False, busy_since=None, cycle_id="")


def _claim_slot(base_model: str, cycle_id: str) -> bool:
    DispatchSlot.objects.get_or_create(base_model=base_model)
    now = timezone.now()
    claimed = (
        DispatchSlot.objects.filter(base_model=base_model)
        .filter(Q(busy=False) | Q(busy_since__lt=now - STALE_CYCLE))
        .update(busy=True, busy_since=now, cycle_id=cycle_id)
    )
    return claimed == 1


def _ready(base_model: str) -> tuple[list[str], dict[str, int]]:
    """Ready operation ids in cycle order, and each model's new dispatch position."""
    queued = Operation.objects.filter(base_model=base_model, status=Operation.Status.QUEUED)
    taken = list(
        queued.filter(sampling_session__isnull=False).order_by("created_at").values_list("id", flat=True)[:CYCLE_LIMIT]
    )
    positions: dict[str, int] = {}
    run_ids = set(queued.filter(training_run__isnull=False).values_list("training_run_id", flat=True))
    chain = Operation.objects.filter(status__in=(Operation.Status.QUEUED, Operation.Status.REJECTED))
    for run in TrainingRun.objects.filter(id__in=run_ids).order_by("last_request_at"):
        next_seq = run.dispatched_seq + 1
        for op_id, seq_id, status in (
            chain.filter(training_run=run, seq_id__gte=next_seq)
            .order_by("seq_id")
            .values_list("id", "seq_id", "status")
        ):
            if seq_id != next_seq or len(taken) >= CYCLE_LIMIT:
                break  # a gap: later arrivals wait for it to fill
            if status == Operation.Status.QUEUED:
                taken.append(op_id)
            next_seq += 1  # a rejected request only holds its seq: step over it
        if next_seq - 1 != run.dispatched_seq:
            positions[run.id] = next_seq - 1
    return taken, positions if taken else {}


def _take_ready(base_model: str, cycle_id: str) -> list[str]:
    with transaction.atomic():
        taken, positions = _ready(base_model)
        for run_id, position in positions.items():
            TrainingRun.objects.filter(pk=run_id).update(dispatched_seq=position)
        Operation.objects.filter(id__in=taken).update(
            status=Operation.Status.RUNNING, cycle_id=cycle_id, started_at=timezone.now()
        )
    return taken


def _send(base_model: str, cycle_id: str, op_ids: list[str]) -> None:
    broker = dramatiq.get_broker()
    queue = queue_name(base_model)
    broker.declare_queue(queue)
    message: dramatiq.Message = dramatiq.Message(
        queue_name=queue, actor_name=CYCLE_ACTOR, args=(base_model, cycle_id, op_ids), kwargs={}, options={}
    )
    try:
        broker.enqueue(message)
    except Exception:
        log.exception("could not enqueue cycle %s; its operations go back to the queue", cycle_id)
        requeue(cycle_id)
        release_slot(base_model, cycle_id)
        raise


def requeue(cycle_id: str) -> None:
    """Put a cycle's unfinished operations back, rewinding each model's dispatch position."""
    with transaction.atomic():
        ops = Operation.objects.filter(cycle_id=cycle_id, status=Operation.Status.RUNNING)
        for run_id in set(ops.exclude(training_run=None).values_list("training_run_id", flat=True)):
            first = min(ops.filter(training_run_id=run_id).values_list("seq_id", flat=True))
            TrainingRun.objects.filter(pk=run_id).update(dispatched_seq=first - 1)
        ops.update(status=Operation.Status.QUEUED, cycle_id="", started_at=None)


def recover(base_models: list[str]) -> None:
    """At a runner's start: put back the cycles a dead runner left running (DESIGN §6), free the
    slots, and dispatch again."""
    cycles = set(
        Operation.objects.filter(base_model__in=base_models, status=Operation.Status.RUNNING).values_list(
            "cycle_id", flat=True
        )
    )
    for cycle_id in cycles:
        requeue(cycle_id)
    for base_model in base_models:
        release_slot(base_model)
        dispatch(base_model)
