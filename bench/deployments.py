"""Deployments the bench scripts start on loopback: the scale path (web + N `manage.py runner` on a
fresh PostgreSQL database and Redis namespace) and the embedded one (`manage.py serve` alone, SQLite,
in-process runner). Each yields (base_url, api_key) and stops its processes afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("LORASMITH_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("LORASMITH_TEST_REDIS", "redis://127.0.0.1:6379/5")
MANAGE = [sys.executable, "manage.py"]


def _base_env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "LORASMITH_BROKER_URL")}
    env.update(LORASMITH_DATA_DIR=str(data), LORASMITH_MAX_ACTIVE_RUNS="0")
    return env


@dataclass(frozen=True)
class Pinning:
    """CPUs for the runners (each with one torch thread) and for the web process: on a CPU box, a
    runner with a core of its own stands in for a GPU runner, whose engine does not share the
    cores the service's own work runs on."""

    runner_cpus: str = "1"
    web_cpus: str = "0"

    def wrap(self, command: list[str], runner: bool) -> list[str]:
        return ["taskset", "-c", self.runner_cpus if runner else self.web_cpus, *command]


@contextlib.contextmanager
def _processes(
    env: dict[str, str], data: Path, runners: int, pinning: Pinning | None = None
) -> Iterator[tuple[str, str]]:
    subprocess.run([*MANAGE, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    key = subprocess.run(
        [*MANAGE, "issue_api_key", "bench"], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    port = 18000 + os.getpid() % 1000
    names = ["web", *[f"runner-{i}" for i in range(runners)]]
    commands = [["serve", "--port", str(port)], *[["runner"]] * runners]
    processes = []
    for name, command in zip(names, commands):
        log = open(data / f"{name}.log", "w")  # noqa: SIM115 - the child writes it
        argv, child_env = [*MANAGE, *command], env
        if pinning is not None:
            argv = pinning.wrap(argv, runner=name != "web")
            child_env = {**env, "OMP_NUM_THREADS": "1"} if name != "web" else env
        processes.append(subprocess.Popen(argv, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT))
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ready = sum("runner ready" in (data / f"runner-{i}.log").read_text() for i in range(runners))
            with contextlib.suppress(httpx.TransportError):
                if ready == runners and httpx.get(f"{base_url}/api/v1/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        else:
            raise SystemExit(f"the deployment did not start; see {data}")
        yield base_url, key
    finally:
        for p in processes:
            p.terminate()
        for p in processes:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()


@contextlib.contextmanager
def scale_deployment(runners: int = 2, pinning: Pinning | None = None) -> Iterator[tuple[str, str]]:
    import psycopg

    db = f"lorasmith_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{db}"')
    data = Path(tempfile.mkdtemp(prefix="lorasmith-bench-"))
    env = _base_env(data)
    env.update(
        DATABASE_URL=PG_ADMIN.rsplit("/", 1)[0] + f"/{db}",
        REDIS_URL=REDIS,
        LORASMITH_REDIS_NAMESPACE=f"lorasmith-bench-{uuid.uuid4().hex[:6]}",
    )
    try:
        with _processes(env, data, runners, pinning) as deployment:
            yield deployment
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


@contextlib.contextmanager
def embedded_deployment() -> Iterator[tuple[str, str]]:
    data = Path(tempfile.mkdtemp(prefix="lorasmith-bench-"))
    with _processes(_base_env(data), data, 0) as deployment:
        yield deployment
