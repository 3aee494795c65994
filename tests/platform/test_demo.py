"""`make demo`'s command works on a fresh data dir: it starts the embedded service, trains over
HTTP (the loss falls), samples and downloads the adapter, then stops its server."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT, _base_env


def test_demo_trains_samples_and_downloads(tmp_path):
    done = subprocess.run(
        [sys.executable, "manage.py", "demo", "--steps", "4"],
        cwd=ROOT,
        env=_base_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    losses = [float(x) for x in re.findall(r"step +\d+ +loss +([0-9.]+)", done.stdout)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert "greedy sample after training:" in done.stdout
    assert "adapter_model.safetensors" in done.stdout and "adapter_config.json" in done.stdout
