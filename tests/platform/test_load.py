"""Under load, every future resolves: 100 concurrent SDK clients, one model each, 3 x
forward_backward + optim_step of 16 tokens, on the scale path (PostgreSQL + Redis, `serve` and a
separate `manage.py runner`) and in embedded mode. No 5xx and no traceback in any log, and on
PostgreSQL the connections stay within the configured pools (read from pg_stat_activity while
the clients run). Prints p50/p95 latency per request kind (run with -s to see them)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

import lorasmith
from lorasmith import AdamParams, Datum, ModelInput
from tests.conftest import embedded_server, redis_server

pytestmark = pytest.mark.slow
CLIENTS = 100
STEPS = 3
POOL_SIZE = 6  # per process: web and runner
TOKENS = [3, 320, 265, 203, 44, 538, 83, 685, 4, 12, 40, 77, 101, 230, 5, 9, 17]  # 16 inputs -> 16 targets
UNLIMITED = {
    "LORASMITH_MAX_ACTIVE_RUNS": "0",
    "LORASMITH_MAX_PENDING_OPERATIONS": "0",
    "LORASMITH_DB_POOL_SIZE": str(POOL_SIZE),
    "LORASMITH_DB_POOL_TIMEOUT_SECONDS": "20",
}


def _datum() -> Datum:
    return Datum(
        model_input=ModelInput.from_ints(TOKENS[:-1]),
        loss_fn_inputs={"target_tokens": TOKENS[1:], "weights": [1.0] * (len(TOKENS) - 1)},
    )


def _one_client(base_url: str, api_key: str, seed: int, latencies: dict[str, list[float]]) -> int:
    """Train one model; returns the optimizer steps the server counted for it."""
    with lorasmith.ServiceClient(base_url=base_url, api_key=api_key) as service:
        started = time.monotonic()
        training = service.create_lora_training_client("tiny-llama", rank=4, seed=seed)
        latencies["create_model"].append(time.monotonic() - started)
        for _ in range(STEPS):
            for kind, call in (
                ("forward_backward", lambda: training.forward_backward([_datum()], "cross_entropy")),
                ("optim_step", lambda: training.optim_step(AdamParams(learning_rate=1e-3))),
            ):
                started = time.monotonic()
                call().result(timeout=300)
                latencies[kind].append(time.monotonic() - started)
        return service.create_rest_client().get_training_run(training.model_id).result()["step"]


def _run_clients(server) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = defaultdict(list)
    with ThreadPoolExecutor(CLIENTS) as pool:
        steps = list(pool.map(lambda n: _one_client(server.base_url, server.api_key, n, latencies), range(CLIENTS)))
    assert steps == [STEPS] * CLIENTS
    for kind, values in sorted(latencies.items()):
        cuts = statistics.quantiles(values, n=20)
        print(f"{kind}: n={len(values)} p50={statistics.median(values):.2f}s p95={cuts[18]:.2f}s")
    return latencies


def _assert_clean_logs(server) -> None:
    for log in server.logs.glob("*.log"):
        text = log.read_text()
        for sign in ("Traceback", "Internal Server Error", "Exception inside application"):
            assert sign not in text, (log, text[-3000:])


def _watch_connections(database: str, stop: threading.Event, seen: list[int]) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        name = conn.info.dbname
        while not stop.is_set():
            seen.append(
                conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", [name]
                ).fetchone()[0]
            )
            stop.wait(0.2)


def test_hundred_clients_on_the_scale_path(tmp_path):
    with redis_server(tmp_path, extra_env=UNLIMITED) as server:
        stop, seen = threading.Event(), []
        watcher = threading.Thread(target=_watch_connections, args=(server.env["DATABASE_URL"], stop, seen))
        watcher.start()
        try:
            _run_clients(server)
        finally:
            stop.set()
            watcher.join()
        print(f"PostgreSQL connections: max {max(seen)} (pools allow {2 * POOL_SIZE})")
        assert 0 < max(seen) <= 2 * POOL_SIZE  # web + runner
    _assert_clean_logs(server)


def test_hundred_clients_embedded(tmp_path):
    with embedded_server(tmp_path, extra_env=UNLIMITED) as server:
        _run_clients(server)
    _assert_clean_logs(server)
