"""Start order does not matter: a runner, `serve` and the key commands started on a fresh
database, in any order or at once, each apply the migrations (one at a time) instead of crashing;
and the first requests to a fresh server, twenty at once, all succeed (no lazy import races)."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import ROOT, _base_env, embedded_server, free_port, postgres_database, redis_env

from .wire import Wire


def _manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _spawn(env: dict, log: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )


def _wait_for(condition, what: str, processes: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in processes:
            assert p.poll() is None, f"a process exited while waiting for {what}"
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_issue_api_key_migrates_a_fresh_database(tmp_path):
    done = _manage(_base_env(tmp_path), "issue_api_key", "bob")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("tml-")


@pytest.mark.services
def test_runner_and_serve_started_together_on_a_fresh_postgres_both_come_up(tmp_path):
    with postgres_database() as database_url:
        env = redis_env(tmp_path, database_url)
        port = free_port()
        runner = _spawn(env, tmp_path / "runner.log", "runner")  # first, before anything migrated
        web = _spawn(env, tmp_path / "web.log", "serve", "--host", "127.0.0.1", "--port", str(port))
        try:
            _wait_for(lambda: "runner ready" in (tmp_path / "runner.log").read_text(), "the runner", [runner, web])
            _wait_for(lambda: _healthy(port), "the web server", [runner, web])
            with psycopg.connect(database_url) as conn:
                assert conn.execute("SELECT count(*) FROM training_operation").fetchone() == (0,)
            key = _manage(env, "issue_api_key", "carol").stdout.strip().splitlines()[-1]
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}/api/v1", headers={"X-API-Key": key}, timeout=60
            ) as client:
                wire = Wire(client)
                assert wire.model(wire.session(), seed=3).endswith(":train:0")  # the runner ran the cycle
        finally:
            for p in (runner, web):
                p.terminate()
                p.wait(timeout=30)
        for log in ("runner.log", "web.log"):
            assert "Traceback" not in (tmp_path / log).read_text(), (tmp_path / log).read_text()[-3000:]


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_twenty_first_requests_at_once_on_a_fresh_server_all_succeed(tmp_path):
    with embedded_server(tmp_path) as server:

        def create(n: int) -> tuple[int, int]:
            with server.client() as client:
                session = client.post("create_session", json={"tags": []})
                model = client.post(
                    "create_model",
                    json={
                        "session_id": session.json().get("session_id"),
                        "model_seq_id": 0,
                        "base_model": "tiny-llama",
                        "lora_config": {"rank": 4, "seed": n},
                    },
                )
                return session.status_code, model.status_code

        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(create, range(20)))
    assert answers == [(200, 200)] * 20
    assert "Traceback" not in (tmp_path / "logs" / "web.log").read_text()
