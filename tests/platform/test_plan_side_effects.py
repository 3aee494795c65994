"""DESIGN §6, planning has no side effects: a model the engine lost (takeover, runner restart) or
holds a stale copy of is rebuilt by ops added to the cycle (a `CreateAdapter` or a snapshot's
`LoadState`, then the logged operations after it), never by engine work inside `plan`; a rebuild
that fails fails the operations that needed it, and leaves no half-rebuilt adapter behind."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from accounts.services import ensure_user, issue_api_key
from gpu_runner import Engine
from gpu_runner.types import AdamParams, CreateAdapter, Datum, ForwardBackward, LoadState, LoraSpec, OptimStep
from training import dispatch, runners
from training.execution import cycle, engines
from training.execution.plan import plan
from training.models import Operation, Snapshot, TrainingRun

from .flow import LR, SEQUENCE
from .wire import InProcess, Wire, datum_json

pytestmark = pytest.mark.django_db


class ReadOnlyEngine:
    """Answers `has_adapter` from a fixed set; any other use of the engine fails the test."""

    def __init__(self, held: set[str]) -> None:
        self.held = held

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self.held

    def __getattr__(self, name: str):
        raise AssertionError(f"plan used the engine: {name}")


@pytest.fixture
def sent(monkeypatch, settings) -> list:
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, runner_dead_after_seconds=3600.0)
    messages: list = []
    monkeypatch.setattr(dispatch, "_send", lambda runner, cycle_id, op_ids: messages.append((runner, cycle_id, op_ids)))
    return messages


@pytest.fixture
def wire() -> Wire:
    return Wire(InProcess(issue_api_key(ensure_user("planner"), "test")))


def _trained(wire: Wire, sent: list, steps: int) -> str:
    """A model trained `steps` steps on a real runner, every cycle run."""
    runners.register("tiny-llama")
    model_id = wire.create_model(wire.session(), seed=3).json()["model_id"]
    for step in range(steps):
        wire.forward_backward(model_id, 2 * step + 1, [datum_json(SEQUENCE)])
        wire.optim_step(model_id, 2 * step + 2, LR)
    while sent:
        runner, cycle_id, op_ids = sent.pop(0)
        cycle.execute_cycle(runner.id, runner.epoch, cycle_id, op_ids)
    assert set(Operation.objects.filter(training_run_id=model_id).values_list("status", flat=True)) == {"done"}
    return model_id


def _queued(model_id: str, seq_id: int, kind: str = "forward_backward") -> Operation:
    run = TrainingRun.objects.get(pk=model_id)
    payload = {"data": [datum_json(SEQUENCE)], "loss_fn": "cross_entropy", "loss_fn_config": None}
    op = Operation.of_run(run, kind, seq_id, {**payload, "forward_only": True})
    op.save()
    return Operation.objects.select_related("training_run").get(pk=op.pk)


def test_a_lost_model_is_rebuilt_by_ops_of_the_cycle_not_by_plan(wire, sent):
    model_id = _trained(wire, sent, steps=2)
    op = _queued(model_id, 5)
    imported: set[str] = set()
    planned = plan(ReadOnlyEngine(set()), op, imported, {})
    # a fresh adapter from the seed, then the logged training operations (seq 1-4), then the op
    assert [type(h) for h in planned.helpers] == [CreateAdapter, ForwardBackward, OptimStep, ForwardBackward, OptimStep]
    assert planned.helpers[0].spec.seed == 3
    assert planned.restoring is not None and (planned.restoring.snapshot_seq, planned.restoring.replayed) == (None, 4)
    # a second operation of the same model in this cycle needs no second rebuild
    again = plan(ReadOnlyEngine(set()), _queued(model_id, 6), imported, {})
    assert again.helpers == [] and again.restoring is None


def test_a_stale_copy_is_replaced_from_the_latest_snapshot(wire, sent, tmp_path):
    model_id = _trained(wire, sent, steps=2)
    Snapshot.objects.create(training_run_id=model_id, seq_id=2, step=1, directory=str(tmp_path / "snap"))
    run = TrainingRun.objects.get(pk=model_id)
    built_under = {model_id: run.placement_epoch - 1}  # the copy here predates the run's last move
    planned = plan(ReadOnlyEngine({model_id}), _queued(model_id, 5), set(), built_under)
    assert [type(h) for h in planned.helpers] == [LoadState, ForwardBackward, OptimStep]
    assert planned.restoring is not None and (planned.restoring.snapshot_seq, planned.restoring.replayed) == (2, 2)
    assert built_under[model_id] == run.placement_epoch
    # a current copy needs nothing
    assert plan(ReadOnlyEngine({model_id}), _queued(model_id, 6), set(), built_under).helpers == []


def test_a_model_is_created_by_the_cycle(wire, sent):
    runners.register("tiny-llama")
    model_id = wire.create_model(wire.session(), seed=3).json()["model_id"]
    op = Operation.objects.select_related("training_run").get(training_run_id=model_id, seq_id=0)
    planned = plan(ReadOnlyEngine(set()), op, set(), {})
    assert isinstance(planned.engine_op, CreateAdapter) and planned.helpers == []
    assert planned.finish(None) == {"model_id": model_id, "type": "create_model"}


def test_a_failed_rebuild_fails_the_operations_that_needed_it_and_leaves_no_adapter(wire, sent, tmp_path):
    model_id = _trained(wire, sent, steps=2)
    runner_id = TrainingRun.objects.get(pk=model_id).runner_id
    resident = engines.resident_if_loaded(runner_id)
    assert resident is not None
    resident.engine.remove_adapter(model_id)  # lost (dropped while idle, say)
    gone = tmp_path / "gone"
    gone.mkdir()
    Snapshot.objects.create(training_run_id=model_id, seq_id=2, step=1, directory=str(gone))
    shutil.rmtree(gone)  # the snapshot's files are gone: its LoadState fails
    handles = [wire.forward_backward(model_id, 5, [datum_json(SEQUENCE)]), wire.optim_step(model_id, 6, LR)]
    while sent:
        runner, cycle_id, op_ids = sent.pop(0)
        cycle.execute_cycle(runner.id, runner.epoch, cycle_id, op_ids)
    ops = [Operation.objects.get(pk=h["request_id"]) for h in handles]
    assert [(o.status, o.error_category) for o in ops] == [("failed", "server"), ("failed", "server")]
    assert all(o.error.startswith(f"could not restore model {model_id}: ") for o in ops)
    assert not resident.engine.has_adapter(model_id)  # the next request rebuilds it afresh
    assert not Snapshot.objects.filter(training_run_id=model_id, seq_id__gt=2).exists()


def test_the_create_adapter_op_replaces_a_stale_copy_with_its_seeded_start():
    datum = Datum(
        SEQUENCE[:-1], {"target_tokens": torch.tensor(SEQUENCE[1:]), "weights": torch.ones(len(SEQUENCE) - 1)}
    )
    probe = ForwardBackward("a", [datum], forward_only=True)
    fresh = Engine("tiny-llama")
    fresh.create_adapter("a", LoraSpec(rank=8, seed=5))
    [expected] = fresh.run_cycle([probe])
    engine = Engine("tiny-llama")
    engine.create_adapter("a", LoraSpec(rank=8, seed=5))
    engine.run_cycle([ForwardBackward("a", [datum]), OptimStep("a", AdamParams(learning_rate=LR))])  # now stale
    results = engine.run_cycle([CreateAdapter("a", LoraSpec(rank=8, seed=5)), probe])
    assert all(r.ok for r in results)
    assert results[1].output.metrics["loss:sum"] == expected.output.metrics["loss:sum"]
