"""`make demo`'s command works on a fresh data dir: it starts the embedded service, runs the
cookbook's sl recipe (the loss falls), and the model learns its task: greedy exact-match accuracy on
held-out word sets goes from 0 to at least 0.9 (the answers are checked against the task's own
categories here, not only the command's verdict); it downloads the adapter and loads it with peft,
stops its server, and what it prints (the run's URL, the login) opens the run on the dashboard,
whose chart has the recipe's own held-out NLL. Slow: the demo's full 80 steps (2-5 minutes)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from cookbook.tasks import WORD_CATEGORIES
from tests.conftest import ROOT, _base_env, free_port

DASHBOARD_CHECK = """
from django.test import Client
client = Client()
assert client.login(username="demo", password={password!r}), "the printed login does not log in"
page = client.get({path!r})
html = page.content.decode()
print("status", page.status_code, "shows the run", {run_id!r} in html, "charts heldout/nll", "heldout/nll" in html)
"""


def _manage(env: dict, *args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_demo_learns_its_task_downloads_and_points_at_its_run(tmp_path):
    env = _base_env(tmp_path)

    done = _manage(env, "demo", "--port", str(free_port()), timeout=900)

    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    first, last = map(float, re.search(r"training loss \(NLL per token\): ([0-9.]+) -> ([0-9.]+)", out).groups())
    assert last < first
    assert re.search(r"held-out NLL per token: [0-9.]+ -> [0-9.]+", out)
    before, after = map(float, re.search(r"exact-match accuracy: ([0-9.]+) -> ([0-9.]+)", out).groups())
    assert before < 0.2 and after >= 0.9
    trained = out.split("answered by the trained adapter")[1]
    shown = re.findall(r"  '([A-Za-z ]+)' -> '(.*)' \((right|wrong, expected '\w+')\)", trained)
    assert len(shown) == 3
    for prompt, answer, verdict in shown:  # the printed verdicts agree with the task's categories
        category = next(name for name, members in WORD_CATEGORIES.items() if prompt.split()[0] in members)
        assert all(word in WORD_CATEGORIES[category] for word in prompt.split())
        assert (verdict == "right") == (answer == category)
    assert "adapter_model.safetensors" in out and "adapter_config.json" in out
    assert int(re.search(r"it loads with peft onto tiny-llama: (\d+) LoRA tensors", out).group(1)) > 0

    path, run_id = re.search(r"open http://127\.0\.0\.1:8000(/runs/([^/\s]+)/)", out).groups()
    password = re.search(r"log in as: demo / (\S+)", out).group(1)
    check = _manage(
        env, "shell", "-c", DASHBOARD_CHECK.format(password=password, path=path, run_id=run_id), timeout=120
    )
    assert check.returncode == 0, check.stderr[-3000:]
    assert "status 200 shows the run True charts heldout/nll True" in check.stdout  # the recipe's own metric
