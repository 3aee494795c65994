"""Double await: 20 requests fired with `_async` (no result awaited in between) reach the server and
execute in call order, as the server's own op log records it."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput

from .reference import SEQUENCE


def test_twenty_async_requests_arrive_and_run_in_call_order(live_server_embedded, service):
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=8)
    datum = Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})

    async def fire():
        futures = []
        for _ in range(10):
            futures.append(await training.forward_backward_async([datum]))
            futures.append(await training.optim_step_async(AdamParams(learning_rate=1e-3)))
        return [await f for f in futures]

    results = asyncio.run(fire())
    assert len(results) == 20

    with sqlite3.connect(live_server_embedded.data_dir / "lorasmith.sqlite3") as db:
        log = db.execute(
            "SELECT seq_id, kind, created_at, started_at, finished_at FROM training_operation "
            "WHERE training_run_id = ? AND seq_id > 0 ORDER BY seq_id",
            (training.model_id,),
        ).fetchall()
    assert [(seq, kind) for seq, kind, *_ in log] == [
        (seq, "forward_backward" if seq % 2 else "optim_step") for seq in range(1, 21)
    ]
    arrived = [created for _, _, created, _, _ in log]
    assert arrived == sorted(arrived), "the SDK POSTed out of call order"
    finished = [done for *_, done in log]
    assert finished == sorted(finished), "the server ran the model's requests out of order"


def test_a_rejected_request_does_not_stall_the_model(service):
    training = service.create_lora_training_client("tiny-llama", rank=4, seed=8)
    datum = Datum(model_input=ModelInput.from_ints(SEQUENCE[:-1]), loss_fn_inputs={"target_tokens": SEQUENCE[1:]})
    with pytest.raises(lorasmith.BadRequestError, match="nope"):
        training.forward_backward([datum], "nope").result(timeout=60)
    assert training.forward_backward([datum]).result(timeout=60).metrics["loss:sum"] > 0
    assert training.optim_step().result(timeout=60) is not None
