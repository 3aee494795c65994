"""An exception inside a cycle fails only the affected futures (category server, with a message);
other models' requests keep running."""
from __future__ import annotations

from .wire import Wire, datum_json

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4]


def test_forced_failure_is_contained(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    doomed = wire.model(session, 0, seed=1, force_runner_failure=True)
    healthy = wire.model(session, 1, seed=1)
    failing = wire.forward_backward(doomed, 1, [datum_json(SEQUENCE)])
    fine = wire.forward_backward(healthy, 1, [datum_json(SEQUENCE)])
    failed = wire.result(failing)
    assert failed["category"] == "server" and "forced runner failure" in failed["error"]
    assert wire.result(fine)["metrics"]["loss:sum"] > 0
    later = wire.result(wire.optim_step(healthy, 2))
    assert "grad_norm:mean" in later["metrics"]
