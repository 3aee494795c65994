"""RabbitMQ as the Dramatiq broker (LORASMITH_BROKER_URL=amqp://…; push still rides on Redis): the
web process sends each cycle to the base model's queue and a separate runner process executes it."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from tests.conftest import REDIS_TEST_URL, LiveServer, _base_env, _redis_ok, _require

from .wire import Wire, datum_json

AMQP_URL = os.environ.get("LORASMITH_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4]


def _rabbitmq_ok() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.slow  # another broker for the same path; CI runs it (make test), the fast tier skips it
@pytest.mark.services
def test_cycles_travel_over_rabbitmq(tmp_path):
    _require("RabbitMQ", _rabbitmq_ok())
    _require("Redis", _redis_ok())
    env = _base_env(tmp_path)
    tag = uuid.uuid4().hex[:8]
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}",
            "REDIS_URL": REDIS_TEST_URL,
            "LORASMITH_BROKER_URL": AMQP_URL,
            "LORASMITH_QUEUE_PREFIX": f"test-{tag}.",
            "LORASMITH_REDIS_NAMESPACE": f"lorasmith-amqp-{tag}",
        }
    )
    server = LiveServer(env, tmp_path, with_runner=True)
    try:
        wire = Wire(server.client())
        model_id = wire.model(wire.session(), seed=41)
        first = wire.result(wire.forward_backward(model_id, 1, [datum_json(SEQUENCE)]), timeout=90)
        assert "grad_norm:mean" in wire.result(wire.optim_step(model_id, 2))["metrics"]
        second = wire.result(wire.forward_backward(model_id, 3, [datum_json(SEQUENCE)]), timeout=90)
        assert second["metrics"]["loss:sum"] != pytest.approx(first["metrics"]["loss:sum"], rel=1e-6)  # it stepped
    finally:
        server.stop()
        _delete_queues(f"test-{tag}.runner.tiny-llama")


def _delete_queues(queue: str) -> None:
    """Dramatiq's queues are durable: drop this run's (and its delay/dead-letter twins)."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(queue=name)
    finally:
        connection.close()
