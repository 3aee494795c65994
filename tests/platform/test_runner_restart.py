"""DESIGN §6: a runner that goes away loses no accepted request; the next runner rebuilds each
adapter from its seed and the logged operations, and training continues with the same numbers."""

from __future__ import annotations

import pytest

from .flow import LR, SEQUENCE, engine_losses
from .wire import Wire, datum_json


@pytest.mark.services
def test_restarted_runner_replays_the_op_log(live_server_redis):
    wire = Wire(live_server_redis.client())
    model_id = wire.model(wire.session(), seed=1)
    losses, seq = [], 1
    for step in range(4):
        if step == 2:
            live_server_redis.restart_runner()
        fb = wire.forward_backward(model_id, seq, [datum_json(SEQUENCE)])
        opt = wire.optim_step(model_id, seq + 1, LR)
        seq += 2
        losses.append(wire.result(fb)["metrics"]["loss:sum"])
        wire.result(opt)
    assert losses == pytest.approx(engine_losses(live_server_redis.data_dir, steps=4), rel=1e-5)
