"""DESIGN §6, fair cycles: a cycle is filled under a token budget, tenants in turn (and within a
tenant, its runs and samplers in turn), so a stream of samples or one tenant's many runs or large
requests starves nobody, and a request larger than the budget runs alone; what is waiting on a
runner is read, and a cycle dispatched, in a fixed number of queries, however many runs wait."""

from __future__ import annotations

from collections import deque
from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import ensure_user, issue_api_key
from training import dispatch, runners
from training.dispatch import Lane, Waiting, fill
from training.execution import cycle
from training.models import Operation, Runner, TrainingRun

from .flow import LR, SEQUENCE
from .wire import InProcess, Wire, datum_json

T0 = datetime(2026, 1, 1)


def lane(owner: int, name: str, count: int, run: bool = False, age: int = 0, cost: int = 1) -> Lane:
    return Lane(
        owner,
        name if run else None,
        T0 + timedelta(seconds=age),
        deque(Waiting(f"{name}{i}", i, cost=cost) for i in range(1, count + 1)),
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


def test_the_token_budget_ends_a_cycle_and_a_big_tenant_leaves_room_for_a_small_one():
    big = lane(1, "big", 5, run=True, age=0, cost=600)  # queued first, 3,000 tokens in all
    small = lane(2, "small", 4, run=True, age=5, cost=50)
    taken, positions = fill([big, small], budget=1_000)
    # big's second request would take the cycle past 1,000 tokens: it waits, small's all go
    assert taken == ["big1", "small1", "small2", "small3", "small4"]
    assert positions == {"big": 1, "small": 4}
    assert 600 + 4 * 50 <= 1_000


def test_a_request_larger_than_the_budget_runs_alone_and_first_when_oldest():
    huge = lane(1, "h", 2, run=True, age=0, cost=5_000)
    others = lane(2, "s", 10, age=1, cost=10)
    assert fill([others, huge], budget=1_000) == (["h1"], {"h": 1})
    # younger than the others, it waits for them, then goes first the next time it is the oldest
    young = lane(1, "h", 2, run=True, age=2, cost=5_000)
    assert fill([lane(2, "s", 3, age=1, cost=10), young], budget=1_000)[0] == ["s1", "s2", "s3"]


def test_a_rejected_request_holds_its_seq_and_is_stepped_over():
    chain = Lane(1, "r", T0, deque([Waiting("x1", 1), Waiting("x2", 2, rejected=True), Waiting("x3", 3)]))
    assert fill([chain]) == (["x1", "x3"], {"r": 3})


def test_an_operation_whose_runner_died_goes_alone():
    chain = Lane(1, "r", T0, deque([Waiting("x1", 1, attempts=1), Waiting("x2", 2)]))
    other = lane(2, "s", 5)
    assert fill([other, chain]) == (["x1"], {"r": 1})


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
def test_under_a_token_budget_training_keeps_stepping_while_samples_stream_in(queues, monkeypatch):
    """Cycles bounded by tokens, not by count: each sample costs (6 + 2) tokens, a step's
    forward_backward 17; a budget of 40 tokens holds a few samples and one step's pass. New samples
    keep arriving (more than a cycle takes), yet every training request completes within two
    cycles of its arrival."""
    monkeypatch.setattr(dispatch, "CYCLE_TOKENS", 40)
    runner = runners.register("tiny-llama")
    sampling = Wire(InProcess(issue_api_key(ensure_user("sampler"), "k")))
    training = Wire(InProcess(issue_api_key(ensure_user("trainer"), "k")))
    sampler = sampling.sampler(sampling.session())
    model_id = training.create_model(training.session(), seed=2).json()["model_id"]
    cycle.execute_cycle(*queues[runner.queue].popleft())
    seq, sample_seq, samples = 1, 0, []
    for _ in range(4):
        for _ in range(6):  # 48 tokens of samples per round: more than a cycle holds
            samples.append(sampling.post("asample", Wire.sample_body(sampler, sample_seq, tokens=SEQUENCE[:6])))
            sample_seq += 1
        step = [
            training.forward_backward(model_id, seq, [datum_json(SEQUENCE)]),
            training.optim_step(model_id, seq + 1),
        ]
        seq += 2
        for _ in range(2):
            if queues[runner.queue]:
                cycle.execute_cycle(*queues[runner.queue].popleft())
        assert [Operation.objects.get(id=h["request_id"]).status for h in step] == ["done", "done"]
    sampled = Operation.objects.filter(id__in=[h["request_id"] for h in samples], status="done").count()
    assert sampled >= 8  # sampling kept its turns too
    for ops in queues[runner.queue]:
        assert sum(Operation.objects.filter(id__in=ops[3]).values_list("cost_tokens", flat=True)) <= 40


@pytest.mark.django_db
def test_a_small_tenants_requests_land_in_the_first_cycle_beside_a_big_tenants(queues, monkeypatch):
    monkeypatch.setattr(dispatch, "CYCLE_TOKENS", 100)
    runner = runners.register("tiny-llama")
    Runner.objects.filter(pk=runner.pk).update(busy_cycle="held")  # everything queues first
    big = Wire(InProcess(issue_api_key(ensure_user("big"), "k")))
    small = Wire(InProcess(issue_api_key(ensure_user("small"), "k")))
    heavy = [datum_json(SEQUENCE)] * 2  # 34 tokens a request
    big_ops = []
    for seed in range(3):  # the big tenant queues first: 3 models, 2 heavy passes each (204 tokens)
        model_id = big.create_model(big.session(), seed=seed).json()["model_id"]
        big_ops += [big.forward_backward(model_id, s, heavy)["request_id"] for s in (1, 2)]
    small_model = small.create_model(small.session()).json()["model_id"]
    small_ops = [small.forward_backward(small_model, s)["request_id"] for s in (1, 2)]
    Runner.objects.filter(pk=runner.pk).update(busy_cycle="")
    dispatch.dispatch("tiny-llama")
    [(_, _, _, first)] = queues[runner.queue]
    assert set(small_ops) <= set(first)  # the small tenant's both passes are in the first cycle
    assert sum(Operation.objects.filter(id__in=first).values_list("cost_tokens", flat=True)) <= 100
    assert 0 < len(set(first) & set(big_ops)) < len(big_ops)  # the big tenant's did not all fit


@pytest.mark.django_db
def test_dispatching_a_cycle_takes_the_same_queries_for_2_or_20_queued_runs(queues):
    runner = runners.register("tiny-llama")
    wire = Wire(InProcess(issue_api_key(ensure_user("many"), "k")))
    session = wire.session()
    counts = []
    for runs in (2, 20):
        Runner.objects.filter(pk=runner.pk).update(busy_cycle="held")  # placed and queued, not sent
        for _ in range(runs):
            wire.create_model(session, len(counts) * 100 + _)
        Runner.objects.filter(pk=runner.pk).update(busy_cycle="")
        with CaptureQueriesContext(connection) as queries:
            dispatch.dispatch("tiny-llama")
        [(_, _, _, op_ids)] = [queues[runner.queue].popleft()]
        assert len(op_ids) == runs
        counts.append(len(queries))
        dispatch.release_slot(runner.id, Runner.objects.get(pk=runner.pk).busy_cycle)
    assert counts[0] == counts[1]


@pytest.mark.django_db
def test_a_dispatch_that_finds_nothing_queued_costs_three_queries(queues):
    """After every cycle: the live runners, the unplaced work, and one claim that matches nothing
    (it holds the runner only if something is queued on it)."""
    runner = runners.register("tiny-llama")
    wire = Wire(InProcess(issue_api_key(ensure_user("idle"), "k")))
    wire.create_model(wire.session())
    [(_, _, cycle_id, _)] = queues[runner.queue]
    Operation.objects.filter(cycle_id=cycle_id).update(status="done")
    dispatch.release_slot(runner.id, cycle_id)
    with CaptureQueriesContext(connection) as queries:
        dispatch.dispatch("tiny-llama")
    assert len(queries) == 3
    assert Runner.objects.get(pk=runner.pk).busy_cycle == ""
    assert len(queues[runner.queue]) == 1


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


@pytest.mark.django_db
def test_a_submit_to_a_busy_runner_costs_one_query_whatever_else_is_placed(queues):
    """All through a pipelined loop the run's runner is busy: a submit reads that runner and sends
    nothing, however many runners and runs there are."""
    held = [runners.register("tiny-llama") for _ in range(3)]
    wire = Wire(InProcess(issue_api_key(ensure_user("busy"), "k")))
    session = wire.session()
    for seq in range(6):
        wire.create_model(session, seq)
    Runner.objects.update(busy_cycle="held")
    counts = []
    for run in TrainingRun.objects.all()[:2]:
        with CaptureQueriesContext(connection) as queries:
            dispatch.dispatch_placed("tiny-llama", run.runner_id)
        counts.append(len(queries))
    assert counts == [1, 1]
    assert sum(len(q) for q in queues.values()) == len(held)  # only the creations' first cycles


@pytest.mark.django_db
def test_a_submit_to_a_run_whose_runner_went_silent_moves_it_to_a_live_runner(queues, settings):
    silent, live = runners.register("tiny-llama"), runners.register("tiny-llama")
    wire = Wire(InProcess(issue_api_key(ensure_user("moved"), "k")))
    Runner.objects.filter(pk=live.pk).update(state=Runner.State.DEAD)  # the run lands on `silent`
    wire.create_model(wire.session())
    model_id = TrainingRun.objects.get().id
    Runner.objects.filter(pk=live.pk).update(state=Runner.State.LIVE)
    assert TrainingRun.objects.get(pk=model_id).runner_id == silent.id
    overdue = timezone.now() - timedelta(seconds=settings.LORASMITH.runner_dead_after_seconds + 5)
    Runner.objects.filter(pk=silent.pk).update(heartbeat_at=overdue)
    dispatch.dispatch_placed("tiny-llama", silent.id)
    assert Runner.objects.get(pk=silent.pk).state == Runner.State.DEAD
    assert TrainingRun.objects.get(pk=model_id).runner_id == live.id
    assert [op_ids for _, _, _, op_ids in queues.get(live.queue, [])]  # its work was sent on
