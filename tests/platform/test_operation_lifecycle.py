"""One lifecycle for an Operation (issue 19): whichever path ends an operation (a cycle that
completes it, an engine that fails it or crashes, a runner that died under it twice, a session
whose heartbeat stopped, its user's cancel, a refusal at the door) it ends with the same fields:
its final status, finished_at, an error and who is to blame unless it completed, its usage counted
exactly once, one `future.finished` push once the transaction commits (none for a refusal: no
future of it was handed out), and retrieve_future reads it as the push's rule says.

Everything runs for real, in process: the API through Django's test client, cycles on the tiny
engine, the op log in the test database; only the engine's answer is replaced where an engine
failure is the point, and the push hook (`events.publish`) is watched, not replaced."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.services import ensure_user, issue_api_key
from api import serializers
from gpu_runner.types import OpResult
from training import dispatch, events, runners
from training.execution import cycle, outcomes
from training.execution.engines import resident_for
from training.models import Checkpoint, Operation, Runner, Session, UsageRecord
from training.upkeep import housekeeping

from .wire import TOKENS, InProcess, Wire, datum_json

pytestmark = pytest.mark.django_db


@pytest.fixture
def pushes(monkeypatch) -> list[tuple[int, dict]]:
    """Every push as it leaves for the Channels layer (then sent on, as ever)."""
    seen: list[tuple[int, dict]] = []
    publish = events.publish

    def watched(user_id: int, message: dict) -> None:
        seen.append((user_id, message))
        publish(user_id, message)

    monkeypatch.setattr(events, "publish", watched)
    return seen


def _finished_pushes(pushes: list[tuple[int, dict]], op_id: str) -> int:
    return sum(1 for _, m in pushes if m["type"] == "future.finished" and m["request_id"] == op_id)


def _check_finished(
    wire: Wire, pushes, since: datetime, op_id: str, status: str, category: str, usage_records: int
) -> Operation:
    op = Operation.objects.get(id=op_id)
    assert op.status == status, (op.status, op.error)
    assert op.finished_at is not None and since <= op.finished_at <= timezone.now()
    assert UsageRecord.objects.filter(operation_id=op_id).count() == usage_records
    assert _finished_pushes(pushes, op_id) == (0 if status == Operation.Status.REJECTED else 1)
    answer = wire.post("retrieve_future", {"request_id": op_id})
    if status == Operation.Status.DONE:
        assert (op.error, op.error_category) == ("", "") and op.result is not None
        assert serializers.future_status(op) == "completed" and answer == op.result
    else:
        assert op.result is None and op.error and op.error_category == category
        assert serializers.future_status(op) == "failed"
        assert answer == {"error": op.error, "category": category}
    return op


def test_every_path_that_ends_an_operation_writes_the_same_fields(
    queues, pushes, monkeypatch, settings, django_capture_on_commit_callbacks
):
    since = timezone.now()
    runner = runners.register("tiny-llama")
    user = ensure_user("lifecycle")
    wire = Wire(InProcess(issue_api_key(user, "k")))
    engine = resident_for(Runner.objects.get(pk=runner.pk)).engine
    run_for_real = engine.run_cycle
    datum = datum_json(TOKENS)
    ends: list[tuple[str, str, str, int]] = []  # (op id, status, category, usage records)

    def run_next_cycle() -> None:
        cycle.execute_cycle(*queues[runner.queue].popleft())

    with django_capture_on_commit_callbacks(execute=True):
        created = wire.create_model(wire.session(), seed=3).json()
        run_next_cycle()
        ends.append((created["request_id"], "done", "", 0))  # creating a model consumes no tokens
        model_id = created["model_id"]

        completed = wire.forward_backward(model_id, 1, [datum])
        run_next_cycle()
        ends.append((completed["request_id"], "done", "", 1))

        refused_by_engine = wire.forward_backward(model_id, 2, [datum])
        monkeypatch.setattr(
            engine, "run_cycle", lambda batch: [OpResult(error="the engine refused it", category="user")] * len(batch)
        )
        run_next_cycle()
        ends.append((refused_by_engine["request_id"], "failed", "user", 0))

        def crashes(batch):
            raise RuntimeError("the engine crashed")

        crashed = wire.forward_backward(model_id, 3, [datum])
        monkeypatch.setattr(engine, "run_cycle", crashes)
        run_next_cycle()
        ends.append((crashed["request_id"], "failed", "server", 0))
        monkeypatch.setattr(engine, "run_cycle", run_for_real)

        killed_its_runner = wire.forward_backward(model_id, 4, [datum])
        _, _, cycle_id, op_ids = queues[runner.queue].popleft()  # in flight when its runner died...
        assert op_ids == [killed_its_runner["request_id"]]
        Operation.objects.filter(id__in=op_ids).update(attempts=dispatch.MAX_ATTEMPTS - 1)  # ...not the first time
        dispatch.requeue(cycle_id, runner_died=True)
        dispatch.release_slot(runner.id, cycle_id)
        ends.append((killed_its_runner["request_id"], "failed", "server", 0))

        refused = wire.send("forward_backward", Wire.forward_backward_body(model_id, 5, [datum], loss_fn="no_such"))
        assert refused.status_code == 400 and refused.json()["consumed_seq_id"] == 5, refused.content
        rejected = Operation.objects.get(training_run_id=model_id, seq_id=5).id
        ends.append((rejected, "rejected", "user", 0))

        Runner.objects.filter(pk=runner.pk).update(busy_cycle="held")  # samples stay queued from here on
        sampler = wire.sampler(wire.session())
        cancelled = wire.post("asample", Wire.sample_body(sampler, 0))
        assert wire.post("cancel_future", {"request_id": cancelled["request_id"]})["cancelled"] is True
        ends.append((cancelled["request_id"], "cancelled", "user", 0))

        silent_session = wire.session()
        orphaned = wire.post("asample", Wire.sample_body(wire.sampler(silent_session), 0))
        timeout = settings.LORASMITH.session_timeout_seconds
        Session.objects.filter(id=silent_session).update(
            last_heartbeat_at=timezone.now() - timedelta(seconds=timeout + 1)
        )
        assert housekeeping.expire_silent_sessions() == 1
        ends.append((orphaned["request_id"], "cancelled", "user", 0))

    for op_id, status, category, usage_records in ends:
        _check_finished(wire, pushes, since, op_id, status, category, usage_records)
    assert all(user_id == user.id for user_id, _ in pushes)
    assert {kind for (kind,) in Operation.objects.values_list("kind")} <= set(Operation.Kind.values)

    # a late or repeated ending changes nothing: no second write, usage or push
    done = Operation.objects.get(id=completed["request_id"])
    before = (done.status, done.result, done.finished_at)
    with django_capture_on_commit_callbacks(execute=True):
        outcomes.complete(done, {"type": "forward_backward", "again": True})
        outcomes.fail(done, "too late", "server")
        assert wire.post("cancel_future", {"request_id": cancelled["request_id"]})["cancelled"] is False
        assert (
            Operation.objects.filter(id=orphaned["request_id"]).finish(
                Operation.Status.FAILED, error="again", category="server"
            )
            == []
        )  # selected by its id alone, it has ended already: an operation ends once
    again = Operation.objects.get(id=completed["request_id"])
    assert (again.status, again.result, again.finished_at) == before
    assert UsageRecord.objects.filter(operation_id=done.id).count() == 1
    assert Operation.objects.get(id=orphaned["request_id"]).status == "cancelled"
    for op_id in (done.id, cancelled["request_id"], orphaned["request_id"]):
        assert _finished_pushes(pushes, op_id) == 1


def test_the_push_leaves_only_once_the_ending_is_committed(api, pushes, django_capture_on_commit_callbacks):
    sampler = api.sampler(api.session())
    queued = [api.post("asample", Wire.sample_body(sampler, seq))["request_id"] for seq in range(2)]

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        assert api.post("cancel_future", {"request_id": queued[0]})["cancelled"] is True
        assert Operation.objects.get(id=queued[0]).status == "cancelled"
        assert _finished_pushes(pushes, queued[0]) == 0  # not yet committed: no client is woken
    for callback in callbacks:
        callback()
    assert _finished_pushes(pushes, queued[0]) == 1

    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), transaction.atomic():
        Operation.objects.filter(id=queued[1]).finish(Operation.Status.CANCELLED, error="x", category="user")
        raise RuntimeError("the caller's transaction rolls back")
    assert Operation.objects.get(id=queued[1]).status == "queued" and _finished_pushes(pushes, queued[1]) == 0


@pytest.mark.parametrize(
    "status, fields",
    [
        ("queued", {"error": "x", "category": "user"}),  # not an ending
        ("done", {}),  # completed without a result
        ("failed", {"error": "x", "category": "user", "result": {}}),  # failed with one
        ("failed", {"error": "x", "category": ""}),  # nobody to blame
        ("cancelled", {"error": "x", "category": "client"}),
    ],
)
def test_an_inconsistent_ending_is_refused_before_anything_is_written(status, fields):
    with pytest.raises(ValueError):
        Operation.finished_fields(status, **fields)


def test_kinds_are_choices_with_the_wire_names():
    assert set(Checkpoint.SAVED_BY) <= set(Operation.Kind.values)
    assert Operation.Kind.FORWARD_BACKWARD == "forward_backward" and Operation.Kind.SAMPLE == "sample"
    assert {Operation.Kind.SAVE_WEIGHTS: 1}.get("save_weights") == 1  # looked up by either, alike


@pytest.mark.parametrize("fails_in", ["its step", "its usage"])
def test_a_cycles_outcomes_are_written_together_and_one_that_fails_to_write_fails_alone(queues, monkeypatch, fails_in):
    """A cycle's outcomes share one transaction (`cycle._record_all`), each in one savepoint: when
    writing one raises, its own writes (its step, its metric points, its usage) are undone and it
    fails as the server's fault; the operations before and after it in the same cycle complete.
    `fails_in` its usage: the failure is inside `finish`, which joins that savepoint (no savepoint
    of its own): each operation costs one SAVEPOINT, not two."""
    runner = runners.register("tiny-llama")
    wire = Wire(InProcess(issue_api_key(ensure_user("batched"), "k")))
    created = wire.create_model(wire.session(), seed=5).json()
    cycle.execute_cycle(*queues[runner.queue].popleft())
    model_id = created["model_id"]
    Runner.objects.filter(pk=runner.pk).update(busy_cycle="held")  # the three land in one cycle
    sent = [wire.forward_backward(model_id, 1), wire.optim_step(model_id, 2), wire.forward_backward(model_id, 3)]
    Runner.objects.filter(pk=runner.pk).update(busy_cycle="")
    dispatch.dispatch("tiny-llama")
    _, _, _, op_ids = queues[runner.queue][0]
    assert op_ids == [s["request_id"] for s in sent]

    def fails_after_writing(op, out):
        outcomes_optim_step_done(op, out)  # its step and metric points are written, then...
        raise RuntimeError("the disk is full")

    def usage_fails(op, result):
        if op.kind == "optim_step":  # its row is finished and its step written, then...
            raise RuntimeError("the disk is full")
        return record_usage(op, result)

    outcomes_optim_step_done, record_usage = outcomes.optim_step_done, UsageRecord.record
    if fails_in == "its step":
        monkeypatch.setattr(outcomes, "optim_step_done", fails_after_writing)
    else:
        monkeypatch.setattr(UsageRecord, "record", usage_fails)
    with CaptureQueriesContext(connection) as queries:
        cycle.execute_cycle(*queues[runner.queue].popleft())
    sql = [q["sql"] for q in queries.captured_queries]
    first = next(i for i, q in enumerate(sql) if q.startswith("SAVEPOINT"))
    last = max(i for i, q in enumerate(sql) if q.startswith('UPDATE "training_operation"'))
    # the batch's own (a savepoint only under the test's transaction), then one per operation
    assert sum(q.startswith("SAVEPOINT") for q in sql[first : last + 1]) == 1 + 3

    first, optim, last = (Operation.objects.get(id=s["request_id"]) for s in sent)
    assert (first.status, last.status) == ("done", "done")
    assert first.result["loss_fn_outputs"] and last.result["loss_fn_outputs"]
    assert optim.status == "failed" and optim.error_category == "server" and "the disk is full" in optim.error
    assert UsageRecord.objects.filter(operation_id__in=[first.id, last.id]).count() == 2
    assert not UsageRecord.objects.filter(operation_id=optim.id).exists()
    run = optim.training_run
    run.refresh_from_db()
    assert run.step == 0  # the failed step's own write was undone with it
    assert not run.metrics.filter(name="learning_rate:mean").exists()  # nor its metric points
    assert run.metrics.filter(name="loss:sum").count() == 2  # the two passes around it have theirs
    # at step 0 both: the failed step is not counted in memory either, for the operations after it
    assert set(run.metrics.filter(name="loss:sum").values_list("step", flat=True)) == {0}
