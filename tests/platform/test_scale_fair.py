"""DESIGN §6, fair cycles: a cycle is filled tenants in turn (and within a tenant, its runs and
samplers in turn), so a stream of samples or one tenant's many runs starves nobody; what is
waiting on a runner is read in a fixed number of queries, however many runs wait."""

from __future__ import annotations

import dataclasses
from collections import deque
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from accounts.services import ensure_user, issue_api_key
from training import dispatch, runners
from training.dispatch import Lane, Waiting, fill
from training.execution import cycle
from training.models import Operation, Runner

from .flow import LR, SEQUENCE
from .wire import InProcess, Wire, datum_json

T0 = datetime(2026, 1, 1)


def lane(owner: int, name: str, count: int, run: bool = False, age: int = 0) -> Lane:
    return Lane(
        owner,
        name if run else None,
        T0 + timedelta(seconds=age),
        deque(Waiting(f"{name}{i}", i) for i in range(1, count + 1)),
    )


def test_tenants_take_turns_whatever_they_queued():
    samples = lane(1, "s", 100, age=0)  # tenant 1 queued 100 samples first
    training = lane(2, "t", 3, run=True, age=1)
    taken, positions = fill([samples, training], limit=4)
    assert taken == ["s1", "t1", "s2", "t2"]
    assert positions == {"t": 2}


def test_one_tenants_many_runs_share_its_turns():
    many = [lane(1, f"a{i}-", 5, run=True, age=i) for i in range(3)]
    alone = lane(2, "b", 5, run=True, age=10)
    taken, _ = fill([*many, alone], limit=6)
    assert sorted(op[0] for op in taken) == ["a", "a", "a", "b", "b", "b"]
    assert [op for op in taken if op.startswith("a")] == ["a0-1", "a1-1", "a2-1"]


def test_a_rejected_request_holds_its_seq_and_is_stepped_over():
    chain = Lane(1, "r", T0, deque([Waiting("x1", 1), Waiting("x2", 2, rejected=True), Waiting("x3", 3)]))
    assert fill([chain]) == (["x1", "x3"], {"r": 3})


def test_an_operation_whose_runner_died_goes_alone():
    chain = Lane(1, "r", T0, deque([Waiting("x1", 1, attempts=1), Waiting("x2", 2)]))
    other = lane(2, "s", 5)
    assert fill([other, chain]) == (["x1"], {"r": 1})


@pytest.fixture
def queues(monkeypatch, settings) -> dict[str, deque]:
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, runner_dead_after_seconds=3600.0)
    sent: dict[str, deque] = {}
    monkeypatch.setattr(
        dispatch,
        "_send",
        lambda runner, cycle_id, op_ids: sent.setdefault(runner.queue, deque()).append(
            (runner.id, runner.epoch, cycle_id, op_ids)
        ),
    )
    return sent


@pytest.mark.django_db
def test_a_stream_of_samples_does_not_starve_a_training_run(queues, monkeypatch):
    monkeypatch.setattr(dispatch, "CYCLE_LIMIT", 4)
    runner = runners.register("tiny-llama")
    sampling = Wire(InProcess(issue_api_key(ensure_user("sampler"), "k")))
    training = Wire(InProcess(issue_api_key(ensure_user("trainer"), "k")))
    sampler = sampling.sampler(sampling.session())
    model_id = training.create_model(training.session(), seed=2).json()["model_id"]
    samples = [sampling.post("asample", Wire.sample_body(sampler, seq)) for seq in range(24)]
    steps = [
        training.forward_backward(model_id, 1, [datum_json(SEQUENCE)]),
        training.optim_step(model_id, 2, LR),
    ]
    for _ in range(3):  # three cycles only: 12 operations of 27 queued
        cycle.execute_cycle(*queues[runner.queue].popleft())
    assert [Operation.objects.get(id=h["request_id"]).status for h in steps] == ["done", "done"]
    done = Operation.objects.filter(id__in=[h["request_id"] for h in samples], status="done").count()
    assert done >= 6  # and sampling kept its turns too


@pytest.mark.django_db
@pytest.mark.parametrize("runs", [2, 12])
def test_reading_what_waits_takes_the_same_queries_for_any_number_of_runs(queues, runs):
    runner = runners.register("tiny-llama")
    Runner.objects.filter(pk=runner.pk).update(busy_cycle="held")  # runs are placed, nothing is sent
    wire = Wire(InProcess(issue_api_key(ensure_user("many"), "k")))
    session = wire.session()
    for seq in range(runs):
        model_id = wire.create_model(session, seq).json()["model_id"]
        wire.forward_backward(model_id, 1)
    with CaptureQueriesContext(connection) as queries:
        taken, _ = dispatch._ready(runner.id)
    assert len(taken) == 2 * runs  # each run's create_model and forward_backward
    assert len(queries) == 2
