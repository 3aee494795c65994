"""The runner is a plain Dramatiq worker: django-dramatiq's `manage.py rundramatiq`, told only the
base model's queue, serves cycles as well as `manage.py runner` does (DESIGN §1: several runner
machines can share one broker, each consuming its base models' queues)."""

from __future__ import annotations

import pytest

from tests.conftest import redis_server

from .flow import LR, SEQUENCE, engine_losses
from .wire import Wire, datum_json

RUNDRAMATIQ = ("rundramatiq", "--processes", "1", "--threads", "1", "--queues", "runner.tiny-llama")


@pytest.mark.slow  # the stock worker for the same cycles; CI runs it (make test), the fast tier skips it
@pytest.mark.services
def test_rundramatiq_worker_runs_cycles(tmp_path):
    with redis_server(tmp_path, runner_args=RUNDRAMATIQ) as server:
        wire = Wire(server.client())
        model_id = wire.model(wire.session(), seed=1)
        losses = []
        for step in range(3):
            fb = wire.forward_backward(model_id, 2 * step + 1, [datum_json(SEQUENCE)])
            opt = wire.optim_step(model_id, 2 * step + 2, LR)
            losses.append(wire.result(fb)["metrics"]["loss:sum"])
            assert "metrics" in wire.result(opt)
    assert losses == pytest.approx(engine_losses(tmp_path, steps=3), rel=1e-5)
