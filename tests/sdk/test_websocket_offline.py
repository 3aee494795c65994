"""Future resolution over a real WebSocket (a small local push server; HTTP goes to the fake):
pushed results need no polling; a socket cut while futures wait falls back to polling with the
same answers; a refused socket means polling from the start."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from lorasmith import Datum, ModelInput

from .fake_server import API_KEY, FakeServer


class PushServer:
    """Pushes each subscribed future's result; the first `cuts` connections are dropped instead."""

    def __init__(self, fake: FakeServer, cuts: int = 0):
        self.fake = fake
        self.cuts = cuts
        self.headers: list[str] = []
        self.run_subscriptions: list[str] = []
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
            for request_id in message["request_ids"]:
                await socket.send(
                    json.dumps(
                        {
                            "type": "future",
                            "request_id": request_id,
                            "status": "completed",
                            "result": self.fake.results[request_id],
                        }
                    )
                )

    def stop(self) -> None:
        async def close():
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def fake():
    return FakeServer()


def _client(fake: FakeServer, push: PushServer):
    return fake.client(base_url=f"http://127.0.0.1:{push.port}", use_websocket=True)


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
