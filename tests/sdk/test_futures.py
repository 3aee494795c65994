"""Futures resolve from the WebSocket push without a single retrieve_future call, and still
resolve (by polling, with the same answer) when the WebSocket is cut or off."""

from __future__ import annotations

import lorasmith
from lorasmith import Datum, ModelInput
from lorasmith._internal import background

from .reference import SEQUENCE


def _datum():
    return Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})


def test_websocket_push_needs_no_polling(live_server_embedded, service):
    service.transport.push_quiet_seconds = 600.0  # no reconciling checks: only the push can resolve them
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=3)
    before = live_server_embedded.retrieve_future_count()
    results = [training.forward([_datum()]).result() for _ in range(3)]
    assert live_server_embedded.retrieve_future_count() == before
    assert len({r.metrics["loss:sum"] for r in results}) == 1


def test_cut_websocket_falls_back_to_polling(live_server_embedded, service):
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=3)
    pushed = training.forward([_datum()]).result()
    background.run(service.transport.events.close())  # the connection drops
    before = live_server_embedded.retrieve_future_count()
    polled = training.forward([_datum()]).result()
    assert live_server_embedded.retrieve_future_count() > before
    assert polled == pushed

    no_ws = lorasmith.ServiceClient(
        base_url=live_server_embedded.base_url, api_key=live_server_embedded.api_key, use_websocket=False
    )
    try:
        other = no_ws.create_lora_training_client("tiny-llama", rank=4, seed=3)
        assert other.forward([_datum()]).result() == pushed
    finally:
        no_ws.close()


def test_metrics_are_pushed_live(service):
    import asyncio

    training = service.create_lora_training_client("tiny-llama", rank=4, seed=3)

    async def watch():
        stream = await training.subscribe_metrics()
        await training.forward_backward([_datum()])
        await training.optim_step()
        points = []
        async for point in stream:
            points.append(point)
            if point["step"] == 1 and "loss:sum" not in point["metrics"]:  # the optimizer step's point
                return points

    points = asyncio.run(asyncio.wait_for(watch(), 60))
    assert points[0]["metrics"]["loss:sum"] > 0 and points[0]["step"] == 0
    assert points[-1]["step"] == 1
