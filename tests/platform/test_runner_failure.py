"""An exception inside a cycle fails only the affected futures (category server, with a message);
other models' requests keep running."""

from __future__ import annotations

import pytest

from .flow import LR, engine_losses
from .flow import SEQUENCE as FLOW_SEQUENCE
from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4]


def test_forced_failure_is_contained(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    doomed = wire.model(session, 0, seed=1, force_runner_failure="yes")
    healthy = wire.model(session, 1, seed=1)
    failing = wire.forward_backward(doomed, 1, [datum_json(SEQUENCE)])
    fine = wire.forward_backward(healthy, 1, [datum_json(SEQUENCE)])
    failed = wire.result(failing)
    assert failed["category"] == "server" and "forced runner failure" in failed["error"]
    assert wire.result(fine)["metrics"]["loss:sum"] > 0
    later = wire.result(wire.optim_step(healthy, 2))
    assert "grad_norm:mean" in later["metrics"]


def test_crash_mid_cycle_fails_its_futures_and_leaves_no_trace(live_server_embedded):
    """The cycle holding seq 3 raises after the engine ran it (gradients already accumulated): its
    future fails with category server, and training goes on exactly as if seq 3 never happened."""
    wire = Wire(live_server_embedded.client())
    model_id = wire.model(wire.session(), seed=1, force_cycle_failure_seq="3")
    losses = [wire.result(wire.forward_backward(model_id, 1, [datum_json(FLOW_SEQUENCE)]))["metrics"]["loss:sum"]]
    wire.result(wire.optim_step(model_id, 2, LR))
    crashed = wire.result(wire.forward_backward(model_id, 3, [datum_json(FLOW_SEQUENCE)]))
    assert crashed["category"] == "server" and "forced cycle failure at seq 3" in crashed["error"]
    losses.append(wire.result(wire.forward_backward(model_id, 4, [datum_json(FLOW_SEQUENCE)]))["metrics"]["loss:sum"])
    wire.result(wire.optim_step(model_id, 5, LR))
    losses.append(wire.result(wire.forward_backward(model_id, 6, [datum_json(FLOW_SEQUENCE)]))["metrics"]["loss:sum"])
    assert losses == pytest.approx(engine_losses(live_server_embedded.data_dir, steps=3), rel=1e-5)
