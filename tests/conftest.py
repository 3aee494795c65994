"""Fixtures for real services and real server processes.

`live_server_embedded`: `manage.py serve` with SQLite and the in-process broker/runner.
`live_server_redis`: `manage.py serve` (web only) + `manage.py runner` (a Dramatiq worker) against
PostgreSQL and Redis. Both are loopback subprocesses with their own data dir and database, started
once per test session. Under CI=true a missing PostgreSQL/Redis fails loudly instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("LORASMITH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_TEST_URL = os.environ.get("LORASMITH_TEST_REDIS", "redis://127.0.0.1:6379/5")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _require(service: str, reachable: bool) -> None:
    if reachable:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{service} is not reachable, and CI=true forbids skipping")
    pytest.skip(f"{service} is not reachable")


def _postgres_ok() -> bool:
    try:
        import psycopg

        psycopg.connect(PG_ADMIN_URL, connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


def _redis_ok() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_TEST_URL, socket_timeout=3).ping())
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


class LiveServer:
    """A running Lorasmith (web + runner) on a loopback port."""

    def __init__(self, env: dict, data_dir: Path, with_runner: bool, runner_args: tuple[str, ...] = ("runner",)):
        self.env = env
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.logs = data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self.runner_args = runner_args
        self._manage("migrate", "--verbosity", "0")
        try:
            self.processes.append(self._spawn("web", "serve", "--host", "127.0.0.1", "--port", str(self.port)))
            if with_runner:
                self.processes.append(self._spawn("runner", *runner_args))
            self._wait_ready()
            self.api_key = self.make_api_key("alice")
        except BaseException:
            self.stop()  # never leak server processes from a failed start
            raise

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")  # noqa: SIM115 - the child process writes it
        return subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def _manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for p in self.processes:
                assert p.poll() is None, f"server process exited; see {self.logs}"
            try:
                health = httpx.get(f"{self.base_url}/api/v1/healthz", timeout=2)
                # our web process, not some other server that grabbed the port first
                if health.status_code == 200 and health.json().get("pid") == self.processes[0].pid:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"server did not start; see {self.logs}")

    def wait_for_log(self, name: str, pattern: str, timeout: float) -> None:
        """Until process `name`'s log shows `pattern` (a regex), e.g. a runner's "runner ready"."""
        path = self.logs / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and re.search(pattern, path.read_text()):
                return
            time.sleep(0.3)
        raise AssertionError(f"{pattern!r} never appeared in {path}")

    def restart_runner(self) -> None:
        """Stop the runner process (its engine and adapters die with it) and start a fresh one."""
        runner = self.processes.pop()
        runner.terminate()
        runner.wait(timeout=60)
        self.processes.append(self._spawn("runner-restarted", *self.runner_args))

    def make_api_key(self, username: str) -> str:
        return self._manage("issue_api_key", username).strip().splitlines()[-1]

    def retrieve_future_count(self) -> int:
        return httpx.get(f"{self.base_url}/api/v1/_test/counters").json()["retrieve_future"]

    def client(self, api_key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.base_url}/api/v1", headers={"X-API-Key": api_key or self.api_key}, timeout=60
        )

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def _base_env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    env.update(
        {
            "LORASMITH_DATA_DIR": str(data_dir),
            "LORASMITH_TEST_HOOKS": "1",
            "LORASMITH_LONG_POLL_SECONDS": "3",
            "LORASMITH_MAX_BODY_BYTES": str(4 * 1024 * 1024),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture(scope="session")
def live_server_embedded(tmp_path_factory):
    with embedded_server(tmp_path_factory.mktemp("embedded")) as server:
        yield server


@contextlib.contextmanager
def postgres_database():
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards. Skips (fails under
    CI=true) when PostgreSQL is unreachable."""
    _require("PostgreSQL", _postgres_ok())
    import psycopg

    db_name = f"lorasmith_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db_name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{db_name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def redis_env(data_dir: Path, database_url: str) -> dict:
    """The environment of a scale-path process: PostgreSQL, Redis and a namespace of its own."""
    _require("Redis", _redis_ok())
    env = _base_env(data_dir)
    env.update(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_TEST_URL,
            "LORASMITH_REDIS_NAMESPACE": f"lorasmith-test-{uuid.uuid4().hex[:8]}",
        }
    )
    return env


@contextlib.contextmanager
def redis_server(data_dir: Path, runner_args: tuple[str, ...] = ("runner",), extra_env: dict | None = None):
    """A web process + a runner process on a fresh PostgreSQL database and a fresh Redis namespace,
    both dropped afterwards. Skips (fails under CI=true) when the services are unreachable."""
    with postgres_database() as database_url:
        server = LiveServer(
            {**redis_env(data_dir, database_url), **(extra_env or {})},
            data_dir,
            with_runner=True,
            runner_args=runner_args,
        )
        try:
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def embedded_server(data_dir: Path, extra_env: dict | None = None):
    """A private `manage.py serve` in embedded mode (SQLite, in-process runner)."""
    server = LiveServer({**_base_env(data_dir), **(extra_env or {})}, data_dir, with_runner=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def live_server_redis(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server
