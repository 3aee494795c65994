"""The official `tinker` client against a live Lorasmith: scripts under scripts/ run with the
Python of `.venv-tinker` (built by `make tinker-venv` from PyPI; never the server's venv) as
subprocesses, pointed at the server only through TINKER_BASE_URL and TINKER_API_KEY."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINKER_PYTHON = ROOT / ".venv-tinker" / "bin" / "python"
SCRIPTS = Path(__file__).with_name("scripts")


@pytest.fixture(scope="session")
def tinker_python() -> Path:
    if not TINKER_PYTHON.exists():
        message = f"{TINKER_PYTHON} is missing: run `make tinker-venv`"
        if os.environ.get("CI") == "true":
            pytest.fail(message + " (CI=true forbids skipping)")
        pytest.skip(message)
    return TINKER_PYTHON


def tinker_env(server, **extra: str) -> dict:
    """The environment of a Tinker user's process pointed at `server` (offline, no telemetry)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "PYTHON", "VIRTUAL_ENV"))}
    env.update(
        {"TINKER_BASE_URL": server.base_url, "TINKER_API_KEY": server.api_key, "TINKER_TELEMETRY": "0"},
        HF_HUB_OFFLINE="1",
        **extra,
    )
    return env


def run_tinker_process(python: Path, server, args: list[str], timeout: float = 600, **env: str):
    """Run `python args...` as a Tinker user would; fails the test with its stderr if it fails."""
    done = subprocess.run(
        [str(python), *args], env=tinker_env(server, **env), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return done


def run_tinker(python: Path, server, script: str, *args: str, timeout: float = 600) -> dict:
    """Run `scripts/<script>` against `server`; the report it printed as `RESULT <json>`."""
    done = run_tinker_process(python, server, [str(SCRIPTS / script), *args], timeout=timeout)
    line = next(line for line in reversed(done.stdout.splitlines()) if line.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))
