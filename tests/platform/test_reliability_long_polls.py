"""Long-polls never starve other requests of database connections (issue 19, hole 3): on
PostgreSQL each web process holds at most LORASMITH_DB_POOL_SIZE connections, and a pending
retrieve_future waits up to LORASMITH_LONG_POLL_SECONDS. More concurrent long-polls than the pool
has connections must all be answered, and another user's calls must still answer meanwhile."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..conftest import redis_server
from .wire import TOKENS, Wire, datum_json

POOL_SIZE = 2
POLLS = 3 * POOL_SIZE


@pytest.fixture(scope="module")
def small_pool_server(tmp_path_factory):
    env = {
        "LORASMITH_DB_POOL_SIZE": str(POOL_SIZE),
        "LORASMITH_DB_POOL_TIMEOUT_SECONDS": "3",
        "LORASMITH_LONG_POLL_SECONDS": "8",
    }
    with redis_server(tmp_path_factory.mktemp("small-pool"), extra_env=env) as server:
        yield server


@pytest.mark.slow  # ~50 s: its own server on a PostgreSQL pool of 2
def test_more_long_polls_than_pool_connections_leave_other_users_served(small_pool_server):
    server = small_pool_server
    wire = Wire(server.client())
    model = wire.model(wire.session(), seed=2)
    # seq 5 waits for seqs 1-4, which never come: its future stays pending for every poll
    pending = wire.forward_backward(model, 5, [datum_json(TOKENS)])["request_id"]
    other = Wire(server.client(server.make_api_key("bob")))

    def poll(_: int) -> tuple[int, dict]:
        with server.client() as client:
            response = client.post("retrieve_future", json={"request_id": pending})
            return response.status_code, response.json()

    with ThreadPoolExecutor(POLLS) as pool:
        polls = [pool.submit(poll, i) for i in range(POLLS)]
        time.sleep(2)  # the polls are now waiting on the pending future
        assert not any(p.done() for p in polls)
        session = other.send("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "test"})
        assert session.status_code == 200, session.text
        assert other.get("training_runs")["training_runs"] == []
        answers = [p.result(timeout=60) for p in polls]
    assert answers == [(200, {"type": "try_again", "request_id": pending, "queue_state": "active"})] * POLLS
