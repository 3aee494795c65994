"""The dashboard's WebSocket: a logged-in browser session (not an API key) subscribes to its own
run, gets the points after the id it names, then each new batch as the runner reports it; a
stranger, another site's page and another user's run get nothing."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from lorasmith_server.asgi import router
from training.events import user_group
from training.models import Operation, SamplingSession, TrainingRun

from .conftest import add_points, make_checkpoint, make_operation, make_run


def _headers(client=None, origin: str = "http://testserver") -> list[tuple[bytes, bytes]]:
    headers = [(b"host", b"testserver"), (b"origin", origin.encode())]
    if client is not None:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return headers


def _socket(headers) -> WebsocketCommunicator:
    return WebsocketCommunicator(router, "/ws/v1/dashboard", headers=headers)


def test_backlog_after_the_given_id_then_live_points(browser, alice):
    run = make_run(alice)
    first, second = add_points(run, 0, {"loss:sum": 2.0}), add_points(run, 1, {"loss:sum": 1.0})

    async def scenario():
        socket = _socket(_headers(browser))
        connected, _ = await socket.connect()
        assert connected
        await socket.send_json_to({"type": "subscribe_run", "model_id": run.id, "after_id": first[0].pk})
        backlog = await socket.receive_json_from(timeout=5)
        state = await socket.receive_json_from(timeout=5)
        await _add_points_async(run)
        await get_channel_layer().group_send(
            user_group(alice.id), {"type": "run.metrics", "model_id": run.id, "step": 2, "metrics": {}}
        )
        live = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return backlog, state, live

    backlog, state, live = async_to_sync(scenario)()
    assert backlog == {"type": "points", "model_id": run.id, "points": [[second[0].pk, 1, "loss:sum", 1.0]]}
    assert state == {"type": "run", "model_id": run.id, "status": "idle", "step": 0}
    assert [p[1:] for p in live["points"]] == [[2, "loss:sum", 0.5], [2, "grad_norm:mean", 3.0]]
    assert live["points"][0][0] > second[0].pk


def test_a_finished_operation_pushes_the_runs_status_and_steps(browser, alice):
    run = make_run(alice, step=3)
    queued = make_operation(run, status="queued")
    other_run_op = make_operation(make_run(alice), status="done")

    async def scenario():
        socket = _socket(_headers(browser))
        await socket.connect()
        await socket.send_json_to({"type": "subscribe_run", "model_id": run.id})
        before = await socket.receive_json_from(timeout=5)
        await database_sync_to_async(_finish)(queued)
        layer, group = get_channel_layer(), user_group(alice.id)
        await layer.group_send(group, {"type": "future.finished", "request_id": other_run_op.id})
        await layer.group_send(group, {"type": "future.finished", "request_id": queued.id})
        after = await socket.receive_json_from(timeout=5)
        nothing_more = await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()
        return before, after, nothing_more

    before, after, nothing_more = async_to_sync(scenario)()
    assert before == {"type": "run", "model_id": run.id, "status": "queued", "step": 3}
    assert after == {"type": "run", "model_id": run.id, "status": "idle", "step": 4}
    assert nothing_more  # the other run's operation pushed nothing


def _finish(op):
    Operation.objects.filter(pk=op.pk).update(status="done")
    TrainingRun.objects.filter(pk=op.training_run_id).update(step=4)


async def _add_points_async(run):
    await database_sync_to_async(add_points)(run, 2, {"loss:sum": 0.5, "grad_norm:mean": 3.0})


def test_events_of_other_runs_and_kinds_are_skipped(browser, alice):
    run, other = make_run(alice), make_run(alice)

    async def scenario():
        socket = _socket(_headers(browser))
        await socket.connect()
        await socket.send_json_to({"type": "subscribe_run", "model_id": run.id})
        assert (await socket.receive_json_from(timeout=5))["type"] == "run"
        layer, group = get_channel_layer(), user_group(alice.id)
        await layer.group_send(group, {"type": "future.finished", "request_id": "x"})
        await layer.group_send(group, {"type": "some.future_event"})
        await layer.group_send(group, {"type": "run.metrics", "model_id": other.id, "step": 1, "metrics": {}})
        nothing = await socket.receive_nothing(timeout=0.5)
        await socket.disconnect()
        return nothing

    assert async_to_sync(scenario)()


def test_anonymous_and_cross_site_handshakes_are_refused(browser):
    async def scenario():
        results = []
        for headers in (_headers(), _headers(browser, origin="https://evil.example")):
            socket = _socket(headers)
            results.append(await socket.connect())
            await socket.disconnect()
        return results

    assert async_to_sync(scenario)() == [(False, 4401), (False, 4401)]


def test_another_users_run_and_bad_messages_are_answered_with_errors(browser, bob):
    theirs = make_run(bob)
    add_points(theirs, 0, {"loss:sum": 1.0})

    async def scenario():
        socket = _socket(_headers(browser))
        await socket.connect()
        answers = []
        for message in (
            {"type": "subscribe_run", "model_id": theirs.id},
            {"type": "subscribe_run", "model_id": theirs.id, "after_id": -1},
            {"type": "subscribe_futures"},
        ):
            await socket.send_json_to(message)
            answers.append(await socket.receive_json_from(timeout=5))
        await socket.send_to(text_data="{not json")
        answers.append(await socket.receive_json_from(timeout=5))
        await socket.disconnect()
        return answers

    answers = async_to_sync(scenario)()
    assert [a["type"] for a in answers] == ["error"] * 4
    assert answers[0]["error"] == f"run {theirs.id!r} not found"


def test_activity_pushes_the_runs_operations_samples_and_checkpoints_as_they_change(browser, alice, data_dir):
    """Asked for, the run page's operations and checkpoints come as HTML at once and again when
    they change: a sample of a sampler on the run's weights queued (no event: the periodic check
    finds it; the run is "sampling"), then a checkpoint saved and the sample finished (an event)."""
    run = make_run(alice)
    make_operation(run, "forward_backward", status="done", seq_id=1)
    sampler = SamplingSession.objects.create(
        id=SamplingSession.make_id(run.session_id, 0),
        session=run.session,
        owner=alice,
        base_model="tiny-llama",
        source_run=run,
    )

    async def scenario():
        socket = _socket(_headers(browser))
        await socket.connect()
        await socket.send_json_to({"type": "subscribe_run", "model_id": run.id, "activity": True})
        state = await socket.receive_json_from(timeout=5)
        first = await socket.receive_json_from(timeout=5)
        sample = await database_sync_to_async(_queue_sample)(sampler)
        queued = await socket.receive_json_from(timeout=10)  # found by the periodic check
        sampling = await socket.receive_json_from(timeout=5)
        await database_sync_to_async(_finish_sample_and_save)(sample, run)
        await get_channel_layer().group_send(user_group(alice.id), {"type": "future.finished", "request_id": sample.id})
        done = await socket.receive_json_from(timeout=5)
        await socket.disconnect()
        return state, first, queued, sampling, done

    state, first, queued, sampling, done = async_to_sync(scenario)()
    assert state["status"] == "idle" and first["type"] == "activity"
    assert 'data-kind="forward_backward"' in first["html"] and 'data-kind="sample"' not in first["html"]
    assert 'data-kind="sample" data-status="queued"' in queued["html"]
    assert sampling == {"type": "run", "model_id": run.id, "status": "sampling", "step": 0}
    assert done["status"] == "idle"  # the sample's end pushes the state first, then the tables
    after = async_to_sync(_next_activity)(browser, run)
    assert 'data-kind="sample" data-status="done"' in after and "sampler_weights/s9" in after


def _queue_sample(sampler):
    op = Operation.of_sampler(sampler, 0, {}, status="queued")
    op.save(force_insert=True)
    return op


def _finish_sample_and_save(op, run):
    Operation.objects.filter(pk=op.pk).update(status="done")
    make_checkpoint(run, "s9")


async def _next_activity(browser, run) -> str:
    socket = _socket(_headers(browser))
    await socket.connect()
    await socket.send_json_to({"type": "subscribe_run", "model_id": run.id, "activity": True})
    while (message := await socket.receive_json_from(timeout=5))["type"] != "activity":
        pass
    await socket.disconnect()
    return message["html"]
