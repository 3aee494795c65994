"""Future resolution over a real WebSocket (a small local push server; HTTP goes to the fake):
pushed results need no polling; a socket cut while futures wait falls back to polling with the
same answers; a refused socket means polling from the start; lost pushes, a socket killed
mid-training and the server's per-future `error` frames still resolve every future (push is
best effort, retrieve_future is the truth)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Callable

import pytest
from websockets.exceptions import ConnectionClosed

from lorasmith import AdamParams, Datum, ModelInput

from .fake_server import API_KEY, FakeServer


class PushServer:
    """Pushes each subscribed future's result when the fake finishes it; the first `cuts`
    connections are closed instead. `pushes(request_id)` False drops that push (a lossy channel
    layer); `errors` answers each subscription with the server's per-future `error` frame first;
    `abort_after` subscriptions, a connection is killed (TCP abort, no close frame)."""

    def __init__(
        self,
        fake: FakeServer,
        cuts: int = 0,
        pushes: Callable[[str], bool] = lambda request_id: True,
        errors: bool = False,
        abort_after: int | None = None,
    ):
        self.fake = fake
        self.cuts = cuts
        self.pushes = pushes
        self.errors = errors
        self.abort_after = abort_after
        self.headers: list[str] = []
        self.run_subscriptions: list[str] = []
        self.subscribed: list[str] = []
        self.aborted = 0
        self.tasks: set[asyncio.Future] = set()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> int:
        from websockets.asyncio.server import serve

        self.server = await serve(self._connection, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _connection(self, socket):
        self.headers.append(socket.request.headers.get("X-API-Key"))
        assert socket.request.path == "/ws/v1/events"
        subscriptions = 0
        async for raw in socket:
            message = json.loads(raw)
            if len(self.headers) <= self.cuts:
                await socket.close()
                return
            if message["type"] == "subscribe_run":
                self.run_subscriptions.append(message["model_id"])
                for step, loss in ((1, 3.0), (2, 2.0)):
                    await socket.send(
                        json.dumps(
                            {
                                "type": "metrics",
                                "model_id": message["model_id"],
                                "step": step,
                                "metrics": {"loss:sum": loss},
                            }
                        )
                    )
                continue
            subscriptions += 1
            if self.abort_after is not None and subscriptions > self.abort_after:
                self.aborted += 1
                socket.transport.abort()
                return
            for request_id in message["request_ids"]:
                self.subscribed.append(request_id)
                if self.errors:
                    await socket.send("{not json")  # a frame the client cannot read is skipped
                    await socket.send(json.dumps({"type": "error", "error": "no such type", "field": "type"}))
                    error = {"type": "error", "error": "could not look up", "field": "request_id"}
                    await socket.send(json.dumps({**error, "request_id": request_id}))
                if self.pushes(request_id):
                    task = asyncio.ensure_future(self._push_when_finished(socket, request_id))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)

    async def _push_when_finished(self, socket, request_id: str) -> None:
        await asyncio.sleep(max(0.0, self.fake.finished_at[request_id] - time.monotonic()))
        message = {"type": "future", "request_id": request_id, "status": "completed"}
        with contextlib.suppress(ConnectionClosed):  # the connection is gone: that push is lost
            await socket.send(json.dumps({**message, "result": self.fake.results[request_id]}))

    def stop(self) -> None:
        async def close():
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def fake():
    return FakeServer()


def _client(fake: FakeServer, push: PushServer, quiet: float | None = None, check: float | None = None):
    service = fake.client(base_url=f"http://127.0.0.1:{push.port}", use_websocket=True)
    if quiet is not None:  # a short quiet period: reconciliation's gaps grow from it to 4x
        service.transport.push_quiet_seconds, service.transport.reconcile_max_seconds = quiet, 4 * quiet
    if check is not None:
        service.transport.check_seconds = check
    return service


def _timed(futures: list) -> dict:
    """concurrent future -> time.monotonic() it resolved, filled in as they resolve."""
    resolved: dict = {}
    for future in futures:
        future.future().add_done_callback(lambda done: resolved.setdefault(done, time.monotonic()))
    return resolved


def _recording_request_ids(fake: FakeServer) -> dict[int, str]:
    """seq_id -> request_id of each forward_backward the fake answers from now on."""
    made: dict[int, str] = {}
    answer = fake.do_forward_backward

    def recording(body):
        handle = answer(body)
        made[body["seq_id"]] = handle["request_id"]
        return handle

    fake.do_forward_backward = recording  # type: ignore[method-assign]
    return made


def _datum() -> Datum:
    return Datum(model_input=ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={"target_tokens": [2, 3, 4]})


def test_pushed_results_need_no_polling(fake):
    push = PushServer(fake)
    service = _client(fake, push)
    try:
        training = service.create_lora_training_client("tiny-llama")
        results = [f.result(timeout=10) for f in [training.forward([_datum()]) for _ in range(3)]]
        assert [r.metrics["loss:sum"] for r in results] == [9.0, 9.0, 9.0]
        assert [c.path for c in fake.calls].count("retrieve_future") == 0
        assert push.headers == [API_KEY]
    finally:
        service.close()
        push.stop()


def test_a_cut_socket_falls_back_to_polling(fake):
    push = PushServer(fake, cuts=1000)
    service = _client(fake, push)
    try:
        training = service.create_lora_training_client("tiny-llama")
        result = training.forward([_datum()]).result(timeout=10)
        assert result.metrics["loss:sum"] == 9.0
        assert [c.path for c in fake.calls].count("retrieve_future") == 2  # create_model's and forward's
    finally:
        service.close()
        push.stop()


def test_no_websocket_server_means_polling(fake):
    service = fake.client(base_url="http://127.0.0.1:9", use_websocket=True)
    try:
        assert (
            service.create_lora_training_client("tiny-llama").forward([_datum()]).result(10).metrics["loss:sum"] == 9.0
        )
    finally:
        service.close()


def test_a_new_socket_is_tried_after_a_cut(fake, monkeypatch):
    from lorasmith._internal import transport

    monkeypatch.setattr(transport, "RECONNECT_SECONDS", 0.0)
    push = PushServer(fake, cuts=1)
    service = _client(fake, push)
    try:
        training = service.create_lora_training_client("tiny-llama")  # its future: socket cut, polled
        assert training.forward([_datum()]).result(timeout=10).metrics["loss:sum"] == 9.0  # pushed
        assert [c.path for c in fake.calls].count("retrieve_future") == 1
        assert len(push.headers) == 2
    finally:
        service.close()
        push.stop()


def test_metrics_stream_until_the_socket_closes(fake):
    push = PushServer(fake)
    service = _client(fake, push)
    try:
        training = service.create_lora_training_client("tiny-llama")

        async def first_two():
            points = []
            async for point in await training.subscribe_metrics():
                points.append(point)
                if len(points) == 2:
                    break
            return points

        assert asyncio.run(first_two()) == [
            {"step": 1, "metrics": {"loss:sum": 3.0}},
            {"step": 2, "metrics": {"loss:sum": 2.0}},
        ]
        assert push.run_subscriptions == ["sess:train:0"]
    finally:
        service.close()
        push.stop()


def _number(request_id: str) -> int:
    return int(request_id.split("-")[1])


def _even(request_id: str) -> bool:
    """Pushed in the tests that lose some pushes; req-0, the model's creation, is always pushed
    there, so that a regression fails a test's timeout instead of hanging create_model."""
    return _number(request_id) % 2 == 0


def _lateness(fake: FakeServer, futures: list, resolved: dict, made: dict[int, str]) -> dict[str, float]:
    """request_id -> seconds from the fake finishing it to the client resolving it."""
    late = {}
    for future in futures:
        request_id = made[int(future.result().metrics["seq:max"])]
        late[request_id] = resolved[future.future()] - fake.finished_at[request_id]
    return late


@pytest.mark.parametrize("pushed", ["none", "every other"])
def test_futures_resolve_when_pushes_are_lost(fake, pushed):
    """30 futures at once, the server pushing none (or every other) of them: each still resolves
    within a few quiet periods of finishing, and checks back off instead of polling hot."""
    quiet = 0.1
    drop_all = pushed == "none"
    push = PushServer(fake, pushes=lambda request_id: _number(request_id) == 0 or (not drop_all and _even(request_id)))
    service = _client(fake, push, quiet=quiet, check=quiet)
    try:
        training = service.create_lora_training_client("tiny-llama")
        made = _recording_request_ids(fake)
        fake.finish_after = 0.5  # the fake holds retrieve_future meanwhile, as the server's long-poll does
        futures = [training.forward([_datum()]) for _ in range(30)]
        resolved = _timed(futures)
        concurrent.futures.wait([f.future() for f in futures], timeout=10)
        assert [f.result(timeout=0).metrics["loss:sum"] for f in futures] == [9.0] * 30
        late = _lateness(fake, futures, resolved, made)
        assert max(late.values()) < 4 * quiet * 1.2 + quiet + 0.5, late  # the widest gap, a check, slack
        polls = [fake.polls.get(request_id, 0) for request_id in made.values()]
        assert max(polls) <= 4  # quiet, then gaps of 2x and 4x over 0.5 s: no hot polling
        if not drop_all:
            assert set(push.subscribed) >= set(made.values())
    finally:
        service.close()
        push.stop()


def test_pushed_futures_are_taken_from_the_push(fake):
    """Pushes that arrive before the quiet period ends resolve their futures; only the lost
    ones are checked with retrieve_future."""
    push = PushServer(fake, pushes=_even)
    service = _client(fake, push, quiet=0.5)
    try:
        training = service.create_lora_training_client("tiny-llama")
        made = _recording_request_ids(fake)
        futures = [training.forward([_datum()]) for _ in range(6)]
        assert [f.result(timeout=10).metrics["loss:sum"] for f in futures] == [9.0] * 6
        checked = {request_id for request_id in made.values() if fake.polls.get(request_id)}
        assert checked == {request_id for request_id in made.values() if not _even(request_id)}
    finally:
        service.close()
        push.stop()


@pytest.mark.parametrize("reconnect", [30.0, 0.0])
def test_futures_resolve_when_the_socket_is_killed_mid_training(fake, monkeypatch, reconnect):
    """The server kills each connection (TCP abort, no close frame) after a few subscriptions
    while futures wait; they resolve by polling, and later ones too (after a reconnect, if due)."""
    from lorasmith._internal import transport

    monkeypatch.setattr(transport, "RECONNECT_SECONDS", reconnect)
    push = PushServer(fake, abort_after=3)
    service = _client(fake, push)  # the default, long quiet period: only the fail-over can resolve them
    try:
        training = service.create_lora_training_client("tiny-llama")
        fake.finish_after = 0.3
        for _ in range(2):  # two rounds of steps; the socket dies in each while its futures wait
            futures = []
            for _ in range(3):
                futures += [training.forward_backward([_datum()], "cross_entropy"), training.optim_step(AdamParams())]
            started = time.monotonic()
            results = [f.result(timeout=10) for f in futures]
            assert time.monotonic() - started < 1.5  # 0.3 s to finish, then long-polled: not a quiet period
            assert [r.metrics["loss:sum"] for r in results[::2]] == [9.0] * 3
            assert all(r.metrics == {"grad_norm:mean": 1.0} for r in results[1::2])
        assert push.aborted == (2 if reconnect == 0.0 else 1)
        assert len(push.headers) == (2 if reconnect == 0.0 else 1)
    finally:
        service.close()
        push.stop()


def test_a_per_future_error_frame_does_not_fail_it(fake):
    """The server's `error` frame naming a future means "poll it": the future is checked at
    once (long before the quiet period ends) and resolves; bad or unknown frames are skipped."""
    push = PushServer(fake, pushes=lambda request_id: _number(request_id) == 0, errors=True)
    service = _client(fake, push, quiet=60.0)
    try:
        training = service.create_lora_training_client("tiny-llama")
        futures = [training.forward([_datum()]) for _ in range(5)]
        assert [f.result(timeout=5).metrics["loss:sum"] for f in futures] == [9.0] * 5
        assert service.transport.events is not None and service.transport.events.socket is not None  # still open
    finally:
        service.close()
        push.stop()


def test_an_error_frame_keeps_the_future_waiting_for_its_push(fake):
    """An `error` frame for a future that is not finished yet leaves it subscribed: a check finds
    it pending, and the later push resolves it."""
    push = PushServer(fake, errors=True)
    service = _client(fake, push, quiet=60.0, check=0.01)
    try:
        training = service.create_lora_training_client("tiny-llama")
        made = _recording_request_ids(fake)
        fake.finish_after = 1.0
        futures = [training.forward([_datum()]) for _ in range(3)]
        assert [f.result(timeout=5).metrics["loss:sum"] for f in futures] == [9.0] * 3
        assert all(fake.polls.get(request_id) == 1 for request_id in made.values())  # the one prompted check
    finally:
        service.close()
        push.stop()
