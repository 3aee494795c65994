"""What finished or superseded work held is freed: old ephemeral sampler snapshots of a run are
deleted (all of them once the session ends) unless a pending sample still needs them, sampling a
released one is a clear 410; the runner drops adapters of finished sessions and released samplers
from its engine, keeping those with pending work."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from accounts.services import ensure_user
from gpu_runner import Engine
from gpu_runner.errors import EngineInputError
from gpu_runner.types import LoraSpec
from training.execution import engines, plan
from training.models import Operation, SamplingSession, Session, TrainingRun
from training.upkeep import retention

from .wire import Wire

pytestmark = pytest.mark.django_db


@pytest.fixture
def snapshots(tmp_path):
    """Five ephemeral snapshots of one run, each with its sampler; a sample is pending on the first."""
    user = ensure_user("rl-user")
    session = Session.objects.create(id="s1", owner=user)
    root = tmp_path / "ephemeral"
    samplers = []
    for seq in range(1, 6):
        directory = root / f"seq-{seq}"
        directory.mkdir(parents=True)
        (directory / "adapter_model.safetensors").write_bytes(b"w")
        samplers.append(
            SamplingSession.objects.create(
                id=f"s1:sample:{seq}", session=session, owner=user, base_model="tiny-llama", weights_dir=str(directory)
            )
        )
    named = tmp_path / "named"
    named.mkdir()
    samplers.append(
        SamplingSession.objects.create(
            id="s1:sample:named",
            session=session,
            owner=user,
            base_model="tiny-llama",
            weights_dir=str(named),
            model_path="tinker://s1:train:0/sampler_weights/named",
        )
    )
    Operation.of_sampler(samplers[0], 0, {}).save()
    return user, session, root, samplers


def _exists(root: Path) -> list[int]:
    return sorted(int(d.name[4:]) for d in root.glob("seq-*"))


def _released(samplers) -> list[str]:
    return sorted(
        SamplingSession.objects.filter(id__in=[s.id for s in samplers], released_at__isnull=False).values_list(
            "id", flat=True
        )
    )


def test_old_snapshots_go_unless_a_pending_sample_needs_them(snapshots, api_for):
    user, _, root, samplers = snapshots
    assert retention.release_ephemeral_weights(root, keep=2) == 2
    assert _exists(root) == [1, 4, 5]
    assert _released(samplers) == ["s1:sample:2", "s1:sample:3"]

    api = api_for(user)

    def sample(sampler_id: str):
        return api.send("asample", Wire.sample_body(sampler_id, 1, [3, 320]))

    refused = sample("s1:sample:2")
    assert refused.status_code == 410 and refused.json()["field"] == "sampling_session_id"
    assert "no longer kept" in refused.json()["error"]
    assert sample("s1:sample:5").status_code == 200


def test_a_finished_session_releases_every_snapshot_once_nothing_waits(snapshots):
    _, session, root, samplers = snapshots
    Session.objects.filter(pk=session.pk).update(finished_reason="success")
    assert retention.release_finished_sessions_weights() == 4
    assert _exists(root) == [1]  # its sample is still pending
    Operation.objects.filter(sampling_session=samplers[0]).update(status=Operation.Status.DONE)
    assert retention.release_finished_sessions_weights() == 1
    assert _exists(root) == [] and retention.release_finished_sessions_weights() == 0
    assert _released(samplers) == [f"s1:sample:{i}" for i in range(1, 6)]  # a named checkpoint's sampler stays
    assert Path(samplers[-1].weights_dir).is_dir()


def test_idle_adapters_leave_the_engine_and_busy_ones_stay(monkeypatch):
    user = ensure_user("engine-user")
    finished, live = (
        Session.objects.create(id=i, owner=user, finished_reason=r) for i, r in (("fin", "expired"), ("live", ""))
    )
    runs = {
        i: TrainingRun.objects.create(id=i, session=s, owner=user, base_model="tiny-llama", rank=2, seed=1)
        for i, s in (("fin:train:0", finished), ("fin:train:1", finished), ("live:train:0", live))
    }
    Operation.of_run(runs["fin:train:1"], "optim_step", 1, {}).save()
    for seq, released in ((3, True), (4, False)):
        SamplingSession.objects.create(
            id=f"live:sample:{seq}",
            session=live,
            owner=user,
            base_model="tiny-llama",
            weights_dir="/nowhere",
            released_at=timezone.now() if released else None,
        )
    engine = Engine("tiny-llama", data_dir=django_settings.DATA_DIR)
    ids = ["fin:train:0", "fin:train:1", "live:train:0", "live:sample:3", "live:sample:4"]
    for adapter_id in ids:
        engine.create_adapter(adapter_id, LoraSpec(rank=2, seed=1))
    monkeypatch.setattr(engines, "_engines", {"a-runner-id": engines.Resident(engine)})
    assert engines.release_idle_adapters() == 2
    assert sorted(engine.adapter_ids()) == ["fin:train:1", "live:sample:4", "live:train:0"]


def test_a_queued_sample_whose_snapshot_went_meanwhile_fails_as_a_user_error(snapshots):
    user, _, root, samplers = snapshots
    retention.release_ephemeral_weights(root, keep=0)  # spares seq-1: its sample is pending
    op = Operation.of_sampler(samplers[1], 0, {})
    op.save()

    class NoAdapters:
        def has_adapter(self, adapter_id: str) -> bool:
            return False

    with pytest.raises(EngineInputError, match="no longer kept"):
        plan.plan(NoAdapters(), op, set())
