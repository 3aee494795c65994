"""DESIGN §6, several runners per base model, in process: runners are rows with their own queues,
a run is placed on one and stays there, a dead runner's runs move (fenced by its epoch), and an
operation that kills its runner twice is failed. The broker is a dict of queues pumped by the
test, so which runner ran which cycle is seen, and each runner has its own engine (its own copy
of every adapter it holds), as two runner processes would.

The reference is the bare engine, one adapter alone (`reference_losses`): a run trained across two
runners must give exactly its numbers."""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict, deque
from datetime import timedelta

import pytest
import torch
from django.utils import timezone

from accounts.services import ensure_user, issue_api_key
from gpu_runner import Engine
from gpu_runner.types import AdamParams, Datum, ForwardBackward, LoraSpec, OptimStep
from training import dispatch, runners
from training.execution import cycle
from training.execution.worker import retire_all, snapshot_all
from training.models import Operation, Runner, Snapshot

from .flow import LR, SEQUENCE
from .wire import InProcess, Wire, datum_json

pytestmark = pytest.mark.django_db
STEPS = 3


class Queues:
    """The broker: each runner's queue, and which runner executed each operation."""

    def __init__(self) -> None:
        self.messages: dict[str, deque] = defaultdict(deque)
        self.ran_on: dict[str, set[str]] = defaultdict(set)  # op id -> runner ids

    def send(self, runner: Runner, cycle_id: str, op_ids: list[str]) -> None:
        self.messages[runner.queue].append((runner.id, runner.epoch, cycle_id, op_ids))

    def deliver(self, queue: str) -> None:
        runner_id, epoch, cycle_id, op_ids = self.messages[queue].popleft()
        for op_id in op_ids:
            self.ran_on[op_id].add(runner_id)
        cycle.execute_cycle(runner_id, epoch, cycle_id, op_ids)

    def pump(self) -> None:
        """Deliver one message of each queue in turn, until every queue is empty."""
        while any(self.messages.values()):
            for queue in [q for q, m in self.messages.items() if m]:
                self.deliver(queue)


@pytest.fixture
def queues(monkeypatch, settings) -> Queues:
    # no heartbeat thread runs here: a runner dies only when a test says so (`_overdue`)
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, runner_dead_after_seconds=3600.0)
    broker = Queues()
    monkeypatch.setattr(dispatch, "_send", broker.send)
    return broker


@pytest.fixture
def wire() -> Wire:
    return Wire(InProcess(issue_api_key(ensure_user("alice"), "test")))


def reference_losses(seed: int, steps: int = STEPS) -> list[float]:
    """The run alone on the bare engine: `steps` x (forward_backward, optim_step), then a
    forward-only pass whose loss reflects the final weights."""
    engine = Engine("tiny-llama")
    engine.create_adapter("reference", LoraSpec(rank=8, seed=seed))
    datum = Datum(
        SEQUENCE[:-1], {"target_tokens": torch.tensor(SEQUENCE[1:]), "weights": torch.ones(len(SEQUENCE) - 1)}
    )
    losses = []
    for _ in range(steps):
        fb, _ = engine.run_cycle(
            [ForwardBackward("reference", [datum]), OptimStep("reference", AdamParams(learning_rate=LR))]
        )
        losses.append(fb.output.metrics["loss:sum"])
    [final] = engine.run_cycle([ForwardBackward("reference", [datum], forward_only=True)])
    return [*losses, final.output.metrics["loss:sum"]]


def submit_step(wire: Wire, model_id: str, step: int) -> tuple[dict, dict]:
    return (
        wire.forward_backward(model_id, 2 * step + 1, [datum_json(SEQUENCE)]),
        wire.optim_step(model_id, 2 * step + 2, LR),
    )


def final_forward(wire: Wire, model_id: str) -> dict:
    return wire.forward_backward(model_id, 2 * STEPS + 1, [datum_json(SEQUENCE)], forward_only=True)


def loss_of(handle: dict) -> float:
    return Operation.objects.get(id=handle["request_id"]).result["metrics"]["loss:sum"]


@pytest.mark.slow  # ~70 s on 2 cores; `make test` (CI) runs it
def test_two_runners_four_runs_each_equal_to_training_alone(queues, wire):
    first, second = runners.register("tiny-llama"), runners.register("tiny-llama")
    session = wire.session()
    seeds = {seq: 10 + seq for seq in range(4)}
    models = {}
    for seq, seed in seeds.items():
        handle = wire.create_model(session, seq, seed=seed).json()
        models[seq] = handle["model_id"]
    handles: dict[int, list[dict]] = defaultdict(list)
    for step in range(STEPS):  # the runs' steps interleaved, each runner's cycles delivered in turn
        for seq, model_id in models.items():
            handles[seq].append(submit_step(wire, model_id, step)[0])
        queues.pump()
    for seq, model_id in models.items():
        handles[seq].append(final_forward(wire, model_id))
    queues.pump()

    held = {seq: wire.get(f"training_runs/{model_id}")["runner"] for seq, model_id in models.items()}
    assert sorted(r["id"] for r in held.values()) == sorted([first.id, first.id, second.id, second.id])
    assert all(set(r) >= {"id", "host", "device"} for r in held.values())
    for seq, model_id in models.items():
        ops = Operation.objects.filter(training_run_id=model_id)
        assert {r for op in ops for r in queues.ran_on[op.id]} == {held[seq]["id"]}  # never ran elsewhere
        assert [loss_of(h) for h in handles[seq]] == pytest.approx(reference_losses(seeds[seq]), rel=1e-5, abs=1e-6)
        assert wire.get(f"training_runs/{model_id}")["snapshot_seq_id"] is None


def _overdue(runner: Runner) -> None:
    Runner.objects.filter(pk=runner.pk).update(heartbeat_at=timezone.now() - timedelta(hours=2))


def test_takeover_replays_the_op_log_and_fences_the_dead_epoch(queues, wire):
    first = runners.register("tiny-llama")
    model_id = wire.create_model(wire.session(), seed=7).json()["model_id"]
    handles = []
    for step in range(2):
        handles.append(submit_step(wire, model_id, step)[0])
        queues.pump()
    second = runners.register("tiny-llama")
    handles.append(submit_step(wire, model_id, 2)[0])  # its cycle goes to the first runner, which then dies
    [stale] = list(queues.messages[first.queue])

    _overdue(first)
    dispatch.dispatch("tiny-llama")  # any live process notices the missing heartbeat
    assert Runner.objects.get(pk=first.pk).state == "dead"
    assert wire.get(f"training_runs/{model_id}")["runner"]["id"] == second.id
    [(requeued_to, _, _, requeued_ops)] = list(queues.messages[second.queue])
    assert requeued_to == second.id and handles[2]["request_id"] in requeued_ops

    before = list(Operation.objects.order_by("id").values_list("id", "status", "cycle_id", "result"))
    queues.messages[first.queue].clear()  # what the flush removed from the broker, delivered late anyway
    cycle.execute_cycle(*stale)
    assert list(Operation.objects.order_by("id").values_list("id", "status", "cycle_id", "result")) == before

    queues.pump()
    handles.append(final_forward(wire, model_id))
    queues.pump()
    assert [loss_of(h) for h in handles] == pytest.approx(reference_losses(7), rel=1e-5, abs=1e-6)
    assert Operation.objects.get(id=handles[2]["request_id"]).attempts == 1  # in flight once when a runner died


def test_an_operation_that_kills_its_runner_twice_is_failed(queues, wire):
    runners.register("tiny-llama")
    model_id = wire.create_model(wire.session(), seed=3).json()["model_id"]
    queues.pump()
    doomed = wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)])
    for _ in range(2):  # its runner dies with it in flight, twice
        [holder] = Runner.objects.live()
        runners.register("tiny-llama")
        _overdue(holder)
        dispatch.dispatch("tiny-llama")
    queues.messages.clear()
    answer = wire.post("retrieve_future", {"request_id": doomed["request_id"]})
    assert answer["error"].startswith("this operation was in flight when its runner died 2 times")
    assert Operation.objects.get(id=doomed["request_id"]).attempts == 2

    after = wire.forward_backward(model_id, 2, [datum_json(SEQUENCE)])  # later requests do not wait on it
    queues.pump()
    assert Operation.objects.get(id=after["request_id"]).status == "done"


def test_a_graceful_stop_moves_the_runs_at_once(queues, wire):
    first = runners.register("tiny-llama")
    model_id = wire.create_model(wire.session(), seed=5).json()["model_id"]
    queues.pump()
    second = runners.register("tiny-llama")
    assert dispatch.retire(first.id, reason="stopped")
    assert not dispatch.retire(first.id, reason="stopped")  # once only: a racing process finds it done
    assert wire.get(f"training_runs/{model_id}")["runner"]["id"] == second.id


def _replayed(caplog, model_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"restored run {model_id} ")]


def test_takeover_restores_from_the_latest_snapshot_and_replays_only_the_tail(queues, wire, settings, caplog):
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, snapshot_every_steps=2)
    first = runners.register("tiny-llama")
    model_id = wire.create_model(wire.session(), seed=9).json()["model_id"]
    handles = []
    for step in range(7):  # snapshots after steps 2, 4 and 6 (seq 4, 8, 12); the oldest is dropped
        handles.append(submit_step(wire, model_id, step)[0])
        queues.pump()
    snapshots = list(Snapshot.objects.filter(training_run_id=model_id).order_by("seq_id"))
    assert [(s.seq_id, s.step) for s in snapshots] == [(8, 4), (12, 6)]
    assert wire.get(f"training_runs/{model_id}")["snapshot_seq_id"] == 12

    second = runners.register("tiny-llama")
    _overdue(first)
    caplog.set_level(logging.INFO, logger="training.execution.plan")
    final = wire.forward_backward(model_id, 15, [datum_json(SEQUENCE)], forward_only=True)
    queues.pump()
    assert wire.get(f"training_runs/{model_id}")["runner"]["id"] == second.id
    # from the snapshot at seq 12, only seq 13 and 14 are replayed, of the run's 14 logged operations
    [restored] = _replayed(caplog, model_id)
    assert restored.endswith("from its snapshot at seq 12, replaying 2 operations")
    assert [loss_of(h) for h in [*handles, final]] == pytest.approx(reference_losses(9, steps=7), rel=1e-5, abs=1e-6)


def test_a_stopping_runner_snapshots_its_runs_so_the_next_replays_nothing(queues, wire, caplog):
    first = runners.register("tiny-llama")
    model_id = wire.create_model(wire.session(), seed=4).json()["model_id"]
    handles = []
    for step in range(3):
        handles.append(submit_step(wire, model_id, step)[0])
        queues.pump()
    assert wire.get(f"training_runs/{model_id}")["snapshot_seq_id"] is None  # 3 steps: none due yet
    second = runners.register("tiny-llama")
    snapshot_all([first.id])  # what a runner does on a graceful stop, before it retires
    retire_all([first.id])
    assert wire.get(f"training_runs/{model_id}")["snapshot_seq_id"] == 6
    caplog.set_level(logging.INFO, logger="training.execution.plan")
    handles.append(final_forward(wire, model_id))
    queues.pump()
    assert wire.get(f"training_runs/{model_id}")["runner"]["id"] == second.id
    [restored] = _replayed(caplog, model_id)
    assert restored.endswith("from its snapshot at seq 6, replaying 0 operations")
    assert [loss_of(h) for h in handles] == pytest.approx(reference_losses(4), rel=1e-5, abs=1e-6)
