"""An idle runner keeps reporting: its heartbeat rows are renewed on a timer (what it holds left as
its last cycle wrote it), so the overview's "quiet" means a runner that stopped, not one with
nothing to do; the reporting ends when the worker stops."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from training.execution.engines import RUNNER
from training.execution.worker import keep_reporting_alive
from training.models import RunnerHeartbeat


@pytest.mark.django_db(transaction=True)  # the reporter writes from its own thread
def test_an_idle_runner_renews_its_heartbeat_until_stopped():
    an_hour_ago = timezone.now() - timedelta(hours=1)
    mine = RunnerHeartbeat.objects.create(runner=RUNNER, base_model="tiny-llama", adapters=3, resident_bytes=77)
    other = RunnerHeartbeat.objects.create(runner="elsewhere:1", base_model="tiny-llama")
    RunnerHeartbeat.objects.update(updated_at=an_hour_ago)
    stop = threading.Event()
    reporter = threading.Thread(target=keep_reporting_alive, args=(stop, 0.05))
    reporter.start()
    try:
        deadline = time.monotonic() + 10
        while RunnerHeartbeat.objects.get(pk=mine.pk).updated_at == an_hour_ago and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        reporter.join(timeout=10)

    assert not reporter.is_alive()
    renewed = RunnerHeartbeat.objects.get(pk=mine.pk)
    assert timezone.now() - renewed.updated_at < timedelta(seconds=10)
    assert (renewed.adapters, renewed.resident_bytes) == (3, 77)  # what it holds is left as it was
    assert RunnerHeartbeat.objects.get(pk=other.pk).updated_at == an_hour_ago  # another runner's row is not
