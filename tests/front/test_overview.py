"""The overview: every base model's queued and running counts with queue waits, runners with their
resident adapters and memory (naming only the viewer's own), the viewer's recent failures."""

from __future__ import annotations

import re
from datetime import timedelta

from django.utils import timezone

from training.models import Operation, RunnerHeartbeat, SamplingSession

from .conftest import make_operation, make_run


def _row(page: str, table: str, first_cell: str) -> list[str]:
    body = re.search(rf'<table id="{table}">(.*?)</table>', page, re.S).group(1)
    for row in re.findall(r"<tr>(.*?)</tr>", body, re.S):
        cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td>(.*?)</td>", row, re.S)]
        if cells and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in {table}")


def test_empty_states(browser):
    page = browser.get("/overview/").content.decode()
    assert 'id="no-runners"' in page and "manage.py runner" in page
    assert 'id="no-failures"' in page
    assert _row(page, "queues", "tiny-llama")[1:4] == ["0", "0", "0"]  # served, idle


def test_queues_count_everyones_work_and_show_waits(browser, alice, bob):
    mine, theirs = make_run(alice), make_run(bob)
    make_operation(mine, status="queued")
    make_operation(theirs, status="queued")
    make_operation(theirs, status="running")
    Operation.objects.filter(training_run=mine).update(created_at=timezone.now() - timedelta(seconds=90))
    done = make_operation(theirs, status="done")
    Operation.objects.filter(pk=done.pk).update(
        created_at=timezone.now() - timedelta(seconds=10), started_at=timezone.now() - timedelta(seconds=6)
    )
    cells = _row(browser.get("/overview/").content.decode(), "queues", "tiny-llama")
    assert cells[1:4] == ["2", "1", "1"]  # queued, running, yours
    assert cells[4].startswith("1 min 3") and cells[5] == "4.0 s"


def test_runners_name_only_own_adapters(browser, alice, bob):
    mine, theirs = make_run(alice), make_run(bob)
    RunnerHeartbeat.objects.create(
        runner="gpu-1:42",
        base_model="tiny-llama",
        resident_adapters=[mine.id, theirs.id],
        adapters=3,
        resident_bytes=2 * 1024 * 1024,
        budget_bytes=None,
    )
    page = browser.get("/overview/").content.decode()
    cells = _row(page, "runners", "gpu-1:42")
    assert cells[2].startswith("2") and "3 held" in cells[2] and cells[3].startswith("2.0\xa0MB")
    assert f'href="/runs/{mine.id}/"' in page and theirs.id not in page


def test_a_runner_silent_for_a_day_is_left_off(browser):
    beat = RunnerHeartbeat.objects.create(runner="old:1", base_model="tiny-llama")
    RunnerHeartbeat.objects.filter(pk=beat.pk).update(updated_at=timezone.now() - timedelta(days=2))
    assert "old:1" not in browser.get("/overview/").content.decode()


def test_recent_failures_are_own_only(browser, alice, bob):
    mine, theirs = make_run(alice), make_run(bob)
    make_operation(
        mine, status="failed", error="CUDA out of memory", error_category="server", finished_at=timezone.now()
    )
    make_operation(theirs, status="failed", error="bob's secret failure", finished_at=timezone.now())
    page = browser.get("/overview/").content.decode()
    assert "CUDA out of memory" in page and f'href="/runs/{mine.id}/"' in page
    assert "secret failure" not in page and theirs.id not in page


def test_anonymous_is_sent_to_login(client, db):
    assert client.get("/overview/")["Location"] == "/accounts/login/?next=/overview/"


def test_a_cycle_leaves_the_runners_heartbeat(alice, api_of, runner, browser):
    wire, _ = api_of(alice)
    model_id = wire.model(wire.session())
    beat = RunnerHeartbeat.objects.get(base_model="tiny-llama")
    assert model_id in beat.resident_adapters and beat.resident_bytes > 0
    assert f'href="/runs/{model_id}/"' in browser.get("/overview/").content.decode()


def test_active_runs_show_their_runner_and_snapshot(browser, alice, bob):
    from .test_run import _place

    mine, done, theirs = make_run(alice), make_run(alice, finished=True), make_run(bob)
    _place(mine, host="node-7", device="cuda:3", state="dead")
    _place(theirs, host="bobs-box")
    page = browser.get("/overview/").content.decode()
    body = re.search(r'<table id="active-runs">(.*?)</table>', page, re.S)[1]
    rows = re.findall(r'<tr data-run="([^"]+)">(.*?)</tr>', body, re.S)
    assert [run_id for run_id, _ in rows] == [mine.id] and done.id not in body  # not the finished one, not bob's
    cells = [" ".join(re.sub(r"<[^>]+>", "", c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", rows[0][1], re.S)]
    assert cells[4].startswith("node-7 · cuda:3 dead") and cells[5] == "7"
    assert "bobs-box" not in page


def test_failures_link_to_their_run_operation_or_sample(browser, alice, data_dir):
    from .conftest import make_checkpoint
    from .test_playground import _sample_row

    run = make_run(alice)
    trained = make_operation(run, status="failed", error="step blew up", finished_at=timezone.now())
    checkpoint = make_checkpoint(run, "s1")
    sample = _sample_row(checkpoint, [])
    SamplingSession.objects.filter(pk=sample.sampling_session_id).update(source_run=run)
    Operation.objects.filter(pk=sample.pk).update(
        status="failed", error="sampler fell over", finished_at=timezone.now()
    )
    base = SamplingSession.objects.create(
        id=SamplingSession.make_id(run.session_id, 1), session=run.session, owner=alice, base_model="tiny-llama"
    )
    bare = Operation.of_sampler(base, 0, {"prompt": [1], "num_samples": 1, "sampling_params": {}}, status="failed")
    bare.error, bare.finished_at = "base sampler failed", timezone.now()
    bare.save(force_insert=True)

    page = browser.get("/overview/").content.decode()

    rows = dict(re.findall(r'<tr data-op="([^"]+)">(.*?)</tr>', page, re.S))
    assert f'href="/runs/{run.id}/#op-{trained.id}"' in rows[trained.id]
    assert f'id="op-{trained.id}"' in browser.get(f"/runs/{run.id}/").content.decode()  # the link's target
    sample_url = re.search(r'class="failure-sample" href="([^"]+)"', rows[sample.id])[1].replace("&amp;", "&")
    assert f'href="/runs/{run.id}/#op-{sample.id}"' in rows[sample.id]
    assert "sampler fell over" in browser.get(sample_url).content.decode()  # the playground shows the failure
    assert "href" not in rows[bare.id] and "a sampler of tiny-llama" in rows[bare.id]
    assert sample.sampling_session_id not in page and base.id not in page  # no raw sampler ids
