"""DESIGN §6, nothing accepted is lost: Redis (broker and push) restarted empty while requests are
queued. A private redis-server on loopback is killed and started again without its data while the
runner is held still, so the cycle message sent to it is gone for sure; every request still
completes, with the numbers of the run on the bare engine, because dispatch re-derives the work
from the op log (the runner notices it holds a cycle whose message never came)."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time

import pytest
import redis

from tests.conftest import free_port, redis_server

from .flow import SEQUENCE
from .test_scale_runners import reference_losses
from .wire import Wire, datum_json

LR = 1e-2
STEPS = 3


class PrivateRedis:
    def __init__(self, tmp_path) -> None:
        self.port = free_port()
        self.dir = tmp_path / "redis"
        self.dir.mkdir()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                if redis.Redis.from_url(self.url).ping():
                    return
            time.sleep(0.1)
        raise AssertionError("the private redis-server did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=20)

    def queued_keys(self) -> int:
        return len(redis.Redis.from_url(self.url).keys("*"))


@pytest.mark.slow
@pytest.mark.services
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_requests_queued_when_redis_restarts_empty_all_complete(tmp_path):
    broker = PrivateRedis(tmp_path)
    broker.start()
    try:
        env = {"REDIS_URL": broker.url, "LORASMITH_RUNNER_DEAD_AFTER_SECONDS": "12"}
        with redis_server(tmp_path, extra_env=env) as server:
            wire = Wire(server.client())
            model_id = wire.model(wire.session(), seed=31)
            runner = server.processes[1]
            runner.send_signal(signal.SIGSTOP)  # held still: the next cycle's message waits in Redis
            try:
                handles = []
                for step in range(STEPS):
                    handles.append(wire.forward_backward(model_id, 2 * step + 1, [datum_json(SEQUENCE)]))
                    wire.optim_step(model_id, 2 * step + 2, LR)
                handles.append(
                    wire.forward_backward(model_id, 2 * STEPS + 1, [datum_json(SEQUENCE)], forward_only=True)
                )
                assert broker.queued_keys() > 0  # the cycle's message is in the broker...
                broker.kill()
                broker.start()  # ...and now it is not: restarted empty
                assert broker.queued_keys() == 0
            finally:
                runner.send_signal(signal.SIGCONT)
            losses = [wire.result(h, timeout=180)["metrics"]["loss:sum"] for h in handles]
            assert losses == pytest.approx(reference_losses(31, steps=STEPS), rel=1e-5, abs=1e-6)
            assert "never received cycle" in (server.logs / "runner.log").read_text()  # re-derived, not luck
    finally:
        broker.kill()
