"""The dispatcher: every live runner has at most one cycle in flight, and a new one starts on a
runner as soon as it is free and something placed on it is ready (continuous batching, no clock).
N runners of one base model run N cycles at once (DESIGN §6).

Ready means: for each training run placed on the runner, its queued operations that continue its
seq_id sequence without a gap (early arrivals wait; a request rejected at the door fills its seq
without running); the queued samples of the samplers placed on it (they never wait for gaps).
A cycle is filled fairly (`fill`) under a token budget: tenants in turn, and within a tenant its
runs and samplers in turn, each operation costing its tokens (`costs.tokens`), so neither sampling
nor one large tenant starves the others; an operation larger than the budget runs alone.

Every call also does what any live process must: it declares runners without a heartbeat dead
and moves their work (`retire`), and places runs and samplers that wait without a live runner.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

import dramatiq
from django.db import transaction
from django.db.models import Case, Exists, F, OuterRef, Q, Value, When
from django.utils import timezone

from . import runners
from .base_models import queue_name
from .models import Operation, Runner, TrainingRun

log = logging.getLogger(__name__)

# The message a cycle travels as, by name: the actor (`execution.actors`) imports dispatch, never
# the other way round. Its arguments: (runner_id, epoch, cycle_id, op_ids).
CYCLE_ACTOR = "execute_cycle"
CYCLE_LIMIT = 64  # operations per cycle: keeps a cycle short so results stream back
# tokens per cycle (forward/backward tokens + sampled prompt and decode tokens): a cycle's work is
# bounded by what it computes, not by how many requests carry it
CYCLE_TOKENS = 16_384
SAMPLES_READ = 16 * CYCLE_LIMIT  # queued samples read per fill (the oldest), a bound on one query
# an operation in flight when its runner died this many times is failed, never replayed for ever
MAX_ATTEMPTS = 2


def dispatch(base_model: str) -> None:
    """Start a cycle on every free live runner of `base_model` that has ready work. Called on
    every submit and after every cycle, so its cost is the service's own overhead: a few queries
    whatever the number of runs (the live runners, the unplaced work, one claim per free runner
    that finds nothing queued on it; the cycle's own reads and writes when one starts)."""
    deadline = runners.dead_deadline()
    heard_from: list[Runner] = []
    for runner in Runner.objects.live(base_model):
        if runner.heartbeat_at < deadline:
            retire(runner.id, reason="no heartbeat")
        else:
            heard_from.append(runner)
    _place_waiting(base_model)
    for runner in heard_from:
        if not runner.busy_cycle:
            dispatch_runner(runner)


def dispatch_placed(base_model: str, runner_id: str | None) -> None:
    """`dispatch` after a submit to a run or sampler placed on `runner_id`: that runner alone, read
    in one query, and nothing more when it is busy, as it is all through a pipelined training loop.
    Work that is unplaced, or whose runner is dead or silent, goes through the whole `dispatch`
    (which places it, and retires that runner). Its other duties are done by every cycle's end and
    every runner's heartbeat."""
    runner = Runner.objects.filter(pk=runner_id).first() if runner_id is not None else None
    if runner is None or runner.state != Runner.State.LIVE or runner.heartbeat_at < runners.dead_deadline():
        dispatch(base_model)
    elif not runner.busy_cycle:
        dispatch_runner(runner)


def dispatch_runner(runner: Runner) -> None:
    """Start a cycle on `runner` if it is free and work placed on it is ready."""
    for _ in range(3):  # bounded: a dispatcher racing us will pick up what we leave
        cycle_id = uuid.uuid4().hex
        if not _claim(runner.id, cycle_id):
            return
        op_ids = _take_ready(runner.id, cycle_id)
        if op_ids:
            _send(runner, cycle_id, op_ids)
            return
        release_slot(runner.id, cycle_id)
        if not _ready(runner.id)[0]:  # re-check: a submit may have landed while we held the slot
            return


def _place_waiting(base_model: str) -> None:
    run_ids, sampler_ids = runners.unplaced_with_work(base_model)
    for run_id in run_ids:
        runners.place_run(run_id, base_model)
    for sampler_id in sampler_ids:
        runners.place_sampler(sampler_id, base_model)


def release_slot(runner_id: str, cycle_id: str) -> None:
    """Free the runner, only if that cycle still holds it (a stale message of a re-queued cycle
    must not free the slot of the cycle now in flight)."""
    Runner.objects.filter(pk=runner_id, busy_cycle=cycle_id).update(busy_cycle="", busy_since=None)


def _claim(runner_id: str, cycle_id: str) -> bool:
    """Take the runner's slot, only if it is free and something is queued on it (one query: an
    idle runner costs a dispatch nothing more)."""
    queued = Operation.objects.filter(status=Operation.Status.QUEUED).filter(
        Q(sampling_session__runner_id=OuterRef("pk"))
        | Q(training_run__runner_id=OuterRef("pk"), seq_id__gt=F("training_run__dispatched_seq"))
    )
    return (
        Runner.objects.filter(Exists(queued), pk=runner_id, state=Runner.State.LIVE, busy_cycle="").update(
            busy_cycle=cycle_id, busy_since=timezone.now()
        )
        == 1
    )


# ---- filling a cycle ---------------------------------------------------------------------------


@dataclass
class Waiting:
    """A queued (or rejected: holds its seq only) operation at the head of its run or sampler."""

    op_id: str
    seq_id: int
    rejected: bool = False
    attempts: int = 0
    cost: int = 1  # tokens (`Operation.cost_tokens`)


@dataclass
class Lane:
    """One run's gap-free chain of waiting operations, or one sampler's queued samples."""

    owner_id: int
    run_id: str | None
    oldest: datetime
    items: deque[Waiting] = field(default_factory=deque)
    position: int | None = None  # a run's new dispatch position once something was taken

    def _skip_rejected(self) -> None:
        while self.items and self.items[0].rejected:
            self.position = self.items.popleft().seq_id

    def head(self) -> Waiting | None:
        return next((w for w in self.items if not w.rejected), None)

    def take(self) -> str | None:
        self._skip_rejected()
        if not self.items:
            return None
        item = self.items.popleft()
        self.position = item.seq_id
        self._skip_rejected()  # a rejected request right after only holds its seq: step over it
        return item.op_id


def fill(
    lanes: Iterable[Lane], limit: int | None = None, budget: int | None = None
) -> tuple[list[str], dict[str, int]]:
    """The operations of one cycle, and each run's new dispatch position.

    Tenants take turns (oldest waiting first), one operation per turn, and within a tenant its
    lanes take turns; so a stream of samples or one tenant's many runs cannot starve anyone. Each
    operation spends its tokens from `budget`: a lane whose next operation does not fit what is
    left waits for the next cycle, where it is among the oldest and goes early; the cycle's first
    operation always goes, so one larger than the whole budget runs alone, never stuck. An
    operation that was in flight when a runner died goes in a cycle of its own, so an operation
    that kills runners takes no other tenant's work down with it a second time."""
    limit = limit or CYCLE_LIMIT
    budget = budget or CYCLE_TOKENS
    lanes = [lane for lane in lanes if lane.head() is not None]
    for lane in lanes:
        head = lane.head()
        if head is not None and head.attempts > 0:
            op_id = lane.take()
            assert op_id is not None
            return [op_id], ({lane.run_id: lane.position} if lane.run_id and lane.position is not None else {})
    tenants: OrderedDict[int, deque[Lane]] = OrderedDict()
    for lane in sorted(lanes, key=lambda lane: lane.oldest):
        tenants.setdefault(lane.owner_id, deque()).append(lane)
    taken: list[str] = []
    spent = 0
    while tenants and len(taken) < limit:
        for owner in list(tenants):
            turn = tenants[owner]
            lane = turn.popleft()
            head = lane.head()
            if head is not None and (not taken or spent + head.cost <= budget):
                op_id = lane.take()
                assert op_id == head.op_id
                taken.append(op_id)
                spent += head.cost
                if lane.head() is not None:
                    turn.append(lane)
            # else: it does not fit what is left of the budget; the lane waits for the next cycle
            if not turn:
                del tenants[owner]
            if len(taken) >= limit:
                break
    positions = {lane.run_id: lane.position for lane in lanes if lane.run_id and lane.position is not None}
    return taken, positions


def _lanes(runner_id: str) -> list[Lane]:
    """What is waiting on a runner, in two queries whatever the number of runs."""
    lanes: dict[str, Lane] = {}
    samples = (
        Operation.objects.filter(sampling_session__runner_id=runner_id, status=Operation.Status.QUEUED)
        .order_by("created_at")
        .values_list("id", "sampling_session_id", "owner_id", "seq_id", "attempts", "created_at", "cost_tokens")[
            :SAMPLES_READ
        ]
    )
    for op_id, sampler_id, owner_id, seq_id, attempts, created_at, cost in samples:
        lane = lanes.setdefault(sampler_id, Lane(owner_id, None, created_at))
        lane.items.append(Waiting(op_id, seq_id, attempts=attempts, cost=cost))
    chains = (
        Operation.objects.filter(
            training_run__runner_id=runner_id,
            status__in=(Operation.Status.QUEUED, Operation.Status.REJECTED),
            seq_id__gt=F("training_run__dispatched_seq"),
        )
        .order_by("training_run_id", "seq_id")
        .values_list(
            "id",
            "training_run_id",
            "owner_id",
            "seq_id",
            "status",
            "attempts",
            "created_at",
            "cost_tokens",
            "training_run__dispatched_seq",
        )
    )
    expected: dict[str, int] = {}
    for op_id, run_id, owner_id, seq_id, status, attempts, created_at, cost, dispatched in chains:
        if expected.setdefault(run_id, dispatched + 1) != seq_id:
            continue  # a gap: later arrivals wait for it to fill
        lane = lanes.setdefault(run_id, Lane(owner_id, run_id, created_at))
        lane.items.append(Waiting(op_id, seq_id, status == Operation.Status.REJECTED, attempts, cost))
        expected[run_id] = seq_id + 1
    return list(lanes.values())


def _ready(runner_id: str) -> tuple[list[str], dict[str, int]]:
    taken, positions = fill(_lanes(runner_id))
    return taken, positions if taken else {}


def _take_ready(runner_id: str, cycle_id: str) -> list[str]:
    with transaction.atomic():
        taken, positions = _ready(runner_id)
        if positions:  # one UPDATE for every run, however many have work in this cycle
            TrainingRun.objects.filter(pk__in=positions).update(
                dispatched_seq=Case(*(When(pk=run_id, then=Value(p)) for run_id, p in positions.items()))
            )
        Operation.objects.filter(id__in=taken).update(
            status=Operation.Status.RUNNING, cycle_id=cycle_id, started_at=timezone.now()
        )
    return taken


def _send(runner: Runner, cycle_id: str, op_ids: list[str]) -> None:
    broker = dramatiq.get_broker()
    broker.declare_queue(runner.queue)
    message: dramatiq.Message = dramatiq.Message(
        queue_name=runner.queue,
        actor_name=CYCLE_ACTOR,
        args=(runner.id, runner.epoch, cycle_id, op_ids),
        kwargs={},
        options={},
    )
    try:
        broker.enqueue(message)
    except Exception:
        # the broker is down: the request stays accepted (its row is the truth), and the runners'
        # heartbeats dispatch again every few seconds until the broker is back
        log.exception("could not enqueue cycle %s; its operations go back to the queue", cycle_id)
        requeue(cycle_id)
        release_slot(runner.id, cycle_id)


# ---- putting work back -------------------------------------------------------------------------


def requeue(cycle_id: str, runner_died: bool = False) -> None:
    """Put a cycle's unfinished operations back, rewinding each run's dispatch position. When its
    runner died, each counts an attempt, and one at `MAX_ATTEMPTS` is failed instead."""
    with transaction.atomic():
        ops = Operation.objects.filter(cycle_id=cycle_id, status=Operation.Status.RUNNING)
        if runner_died:
            ops.update(attempts=F("attempts") + 1)
            ops.filter(attempts__gte=MAX_ATTEMPTS).finish(
                Operation.Status.FAILED,
                error=f"this operation was in flight when its runner died {MAX_ATTEMPTS} times; it is not run again",
                category="server",
            )
        for run_id in set(ops.exclude(training_run=None).values_list("training_run_id", flat=True)):
            # back in the queue from its first; one failed above keeps its place as dispatched (it
            # went alone, `fill`), so the run's later requests do not wait on it
            first = min(ops.filter(training_run_id=run_id).values_list("seq_id", flat=True))
            TrainingRun.objects.filter(pk=run_id).update(dispatched_seq=first - 1)
        ops.update(status=Operation.Status.QUEUED, cycle_id="", started_at=None)


def recover_lost_cycle(runner_id: str, cycle_id: str) -> None:
    """A live runner holds a cycle it is not running and whose message never came (the broker lost
    it: restarted empty): its operations go back to the queue from the op log and the runner is
    freed. Should the message come after all, it finds nothing of its cycle left to run."""
    log.warning("runner %s never received cycle %s; it is re-derived from the op log", runner_id, cycle_id)
    requeue(cycle_id)
    release_slot(runner_id, cycle_id)


def retire(runner_id: str, reason: str) -> bool:
    """Declare a runner dead (no heartbeat, or it stopped) and move its work: its epoch is bumped
    (its messages now do nothing), its queue flushed, its cycle in flight re-queued from the op log,
    its runs and samplers placed on live runners of its base model, which rebuild each adapter
    (latest snapshot, then the logged operations after it). False if another process did it."""
    with transaction.atomic():
        before = runners.declare_dead(runner_id)
        if before is None:
            return False
        if before.busy_cycle:
            requeue(before.busy_cycle, runner_died=reason != "stopped")
        run_ids = runners.unplace_all(runner_id)
    log.warning("runner %s (%s %s) retired: %s", runner_id, before.host, before.base_model, reason)
    if before.queue != queue_name(before.base_model):  # its own queue: nobody else reads it
        try:
            broker = dramatiq.get_broker()
            broker.declare_queue(before.queue)  # a broker that never saw the queue has nothing to flush
            broker.flush(before.queue)
        except Exception:  # the broker is down: the messages left are fenced off by the epoch anyway
            log.exception("could not flush the queue of runner %s", runner_id)
    for run_id in run_ids:
        runners.place_run(run_id, before.base_model)
    return True


def recover(base_models: list[str]) -> None:
    """At a runner's start: put back cycles that no live runner holds (left by a runner that died
    before it had a row, or whose row is gone), then dispatch (which also retires overdue runners)."""
    cycles = set(
        Operation.objects.filter(base_model__in=base_models, status=Operation.Status.RUNNING).values_list(
            "cycle_id", flat=True
        )
    )  # read before the holders: a cycle claimed in between is then not taken for an orphan
    held = set(Runner.objects.live().exclude(busy_cycle="").values_list("busy_cycle", flat=True))
    for cycle_id in cycles - held:
        requeue(cycle_id)
    for base_model in base_models:
        dispatch(base_model)
