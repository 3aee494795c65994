"""One run's page: every metric's points embedded for the chart, recent operations with wait and
duration, the LoRA config, its checkpoints; another user's run is a 404."""

from __future__ import annotations

import json
import re
from datetime import timedelta

from django.utils import timezone

from training.models import Runner, Snapshot, TrainingRun

from .conftest import add_points, make_checkpoint, make_operation, make_run


def _embedded(page) -> dict:
    return json.loads(re.search(r'<script id="metric-points" type="application/json">(.*?)</script>', page, re.S)[1])


def test_metric_points_are_embedded_for_the_chart(browser, alice):
    run = make_run(alice)
    first = add_points(run, 0, {"loss:sum": 2.0})
    add_points(run, 1, {"loss:sum": 1.5, "grad_norm:mean": float("inf")})
    page = browser.get(f"/runs/{run.id}/").content.decode()
    data = _embedded(page)
    assert data["model_id"] == run.id
    assert [p[1:] for p in data["points"]] == [[0, "loss:sum", 2.0], [1, "loss:sum", 1.5], [1, "grad_norm:mean", None]]
    assert data["points"][0][0] == first[0].pk
    assert 'data-socket="/ws/v1/dashboard"' in page and "js/run_metrics.js" in page
    assert re.search(r"<td>loss:sum</td><td>1</td><td>1.5</td>", page)  # the text equivalent


def test_empty_metrics_and_operations_say_what_comes(browser, alice):
    run = make_run(alice)
    page = browser.get(f"/runs/{run.id}/").content.decode()
    assert "No metrics yet" in page and "No operations yet" in page and "No checkpoints of this run" in page


def test_operations_table(browser, alice):
    run = make_run(alice)
    now = timezone.now()
    make_operation(
        run,
        kind="optim_step",
        status="failed",
        seq_id=3,
        started_at=now + timedelta(seconds=2),
        finished_at=now + timedelta(seconds=5.5),
        error="adapter exploded",
        error_category="user",
    )
    make_operation(run, kind="forward_backward", status="queued", seq_id=4)
    page = browser.get(f"/runs/{run.id}/").content.decode()
    assert page.index("<td>4</td>") < page.index("<td>3</td>")  # newest first
    assert "<strong>user</strong>: adapter exploded" in page and "3.5 s" in page


def test_lora_config_and_checkpoints(browser, alice, data_dir):
    run = make_run(alice, rank=32, alpha=16.0, train_mlp=False)
    make_checkpoint(run, "final")
    page = browser.get(f"/runs/{run.id}/").content.decode()
    assert "<dt>rank</dt><dd><code>32</code>" in page and "<dt>train_mlp</dt><dd><code>False</code>" in page
    assert f"tinker://{run.id}/sampler_weights/final" in page


def test_another_users_run_is_404(browser, bob):
    run = make_run(bob)
    assert browser.get(f"/runs/{run.id}/").status_code == 404
    assert browser.get("/runs/no-such-run/").status_code == 404


def test_the_header_names_the_run_and_shows_its_metadata(browser, alice):
    run = make_run(alice, rank=4, user_metadata={"recipe": "sl", "dataset": "<b>chats</b>"})
    run.session.display_name = "cookbook.sl"
    run.session.save(update_fields=["display_name"])
    page = browser.get(f"/runs/{run.id}/").content.decode()
    assert "<h1>cookbook.sl</h1>" in page and f"Run <code>{run.id}</code>" in page
    assert "<dt>LoRA rank</dt><dd>4</dd>" in page and "<dt>Base model</dt><dd>tiny-llama</dd>" in page
    assert "<dt>recipe</dt><dd><code>sl</code>" in page and "&lt;b&gt;chats&lt;/b&gt;" in page  # escaped


def _place(run, host: str = "gpu-box", device: str = "cuda:1", state: str = "live"):
    """`run` held by a runner row on `host`/`device`, with snapshots up to seq 7 (issue 22's fields)."""
    runner = Runner.objects.create(
        id=f"r-{run.session_id[:12]}",
        base_model=run.base_model,
        host=host,
        device=device,
        queue="q",
        heartbeat_at=timezone.now(),
    )
    Runner.objects.filter(pk=runner.pk).update(state=state)
    TrainingRun.objects.filter(pk=run.pk).update(runner=runner)
    for seq in (3, 7):
        Snapshot.objects.create(training_run=run, seq_id=seq, step=seq, directory=f"/snap/{seq}")
    return runner


def test_the_header_shows_the_runner_and_the_snapshot(browser, alice):
    run, bare = make_run(alice), make_run(alice)
    runner = _place(run)
    page = browser.get(f"/runs/{run.id}/").content.decode()
    html = re.search(r'<dd id="run-runner">(.*?)</dd>', page, re.S)[1]
    cell = re.sub(r"<[^>]+>", "", html)
    assert "gpu-box · cuda:1" in cell and runner.id[:8] in cell  # host · device, then the runner's id
    assert f'title="runner {runner.id}"' in html
    assert re.search(r'<dd id="run-snapshot">covers seq_id <strong>7</strong></dd>', page)
    assert TrainingRun.objects.get(pk=run.pk).snapshot_seq_id() == 7  # what the API says too

    page = browser.get(f"/runs/{bare.id}/").content.decode()
    assert "none holds it" in page and re.search(r'<dd id="run-snapshot"><span class="muted">none yet', page)
