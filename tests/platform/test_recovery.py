"""Op-log state changes outside a cycle. DESIGN §6: a runner that boots puts back the cycles a dead runner left running
and dispatches them again; a stale message of the old cycle then runs nothing and frees nothing.
TINKER_WIRE §5.3: a queued sample can be cancelled."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth.models import User

from training import dispatch
from training.execution import cycle
from training.execution.middleware import RecoverOnBoot
from training.intake import sampling_requests
from training.models import Operation, Runner, SamplingSession, Session, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def interrupted():
    """seq 1 and 2 of a model were in flight in cycle `dead` when its runner died (before runners
    had rows: no live runner holds the cycle)."""
    user = User.objects.create(username="alice")
    session = Session.objects.create(id="s", owner=user)
    run = TrainingRun.objects.create(
        id="s:train:0", session=session, owner=user, base_model="tiny-llama", rank=4, seed=1, dispatched_seq=2
    )
    for seq in (1, 2):
        Operation.objects.create(
            id=f"op{seq}",
            owner=user,
            kind="optim_step",
            base_model="tiny-llama",
            training_run=run,
            seq_id=seq,
            payload={},
            status=Operation.Status.RUNNING,
            cycle_id="dead",
        )
    return run


def test_booting_worker_requeues_and_redispatches(interrupted, monkeypatch):
    sent = []
    monkeypatch.setattr(dispatch, "_send", lambda runner, cycle_id, op_ids: sent.append((runner, cycle_id, op_ids)))
    worker = SimpleNamespace(consumer_whitelist={"runner.tiny-llama"})
    RecoverOnBoot().after_worker_boot(None, worker)
    try:
        [(runner, cycle_id, op_ids)] = sent
        assert op_ids == ["op1", "op2"] and cycle_id != "dead"
        assert runner.queue == "runner.tiny-llama"  # a plain rundramatiq worker serves the shared queue
        assert set(Operation.objects.values_list("cycle_id", "status")) == {(cycle_id, "running")}
        assert Runner.objects.get(pk=runner.pk).busy_cycle == cycle_id
        assert TrainingRun.objects.get().runner_id == runner.id

        cycle.execute_cycle(runner.id, runner.epoch, "dead", ["op1", "op2"])  # the dead cycle's message, late
        assert set(Operation.objects.values_list("cycle_id", "status")) == {(cycle_id, "running")}
        assert Runner.objects.get(pk=runner.pk).busy_cycle == cycle_id
    finally:
        RecoverOnBoot().after_worker_shutdown(None, worker)
    assert Runner.objects.get(pk=runner.pk).state == "dead"  # a worker that stops retires its runner


def test_workers_of_other_queues_leave_it_alone(interrupted):
    RecoverOnBoot().after_worker_boot(None, SimpleNamespace(consumer_whitelist={"runner.tiny-qwen3"}))
    assert set(Operation.objects.values_list("cycle_id", "status")) == {("dead", "running")}
    assert not Runner.objects.exists()


def test_a_queued_sample_can_be_cancelled_once(interrupted):
    user = interrupted.owner
    sampler = SamplingSession.objects.create(
        id="s:sample:0", session=interrupted.session, owner=user, base_model="tiny-llama"
    )
    Operation.objects.create(
        id="sample1", owner=user, kind="sample", base_model="tiny-llama", sampling_session=sampler, seq_id=0, payload={}
    )
    assert sampling_requests.cancel_future(user, "sample1") is True
    assert sampling_requests.cancel_future(user, "sample1") is False
    op = Operation.objects.get(id="sample1")
    assert (op.status, op.error_category) == ("cancelled", "user")
