"""Checkpoint retention: a checkpoint past its TTL is purged with its files (directory and .tar),
others stay; the runner's purge runs at most once per interval."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from training import retention, storage
from training.models import Checkpoint, Session, TrainingRun

pytestmark = pytest.mark.django_db


def _checkpoint(run: TrainingRun, name: str, root: Path, expires_in: timedelta | None) -> Checkpoint:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    storage.archive_of(directory)
    return Checkpoint.objects.create(
        training_run=run, owner=run.owner, checkpoint_type="sampler", name=name, directory=str(directory),
        expires_at=timezone.now() + expires_in if expires_in is not None else None)


@pytest.fixture
def checkpoints(tmp_path):
    user = User.objects.create(username="alice")
    run = TrainingRun.objects.create(id="s:train:0", session=Session.objects.create(id="s", owner=user), owner=user,
                                     base_model="tiny-llama", rank=4, seed=1)
    return {name: _checkpoint(run, name, tmp_path, ttl) for name, ttl in
            (("expired", timedelta(seconds=-1)), ("later", timedelta(hours=1)), ("forever", None))}


def test_purge_deletes_expired_checkpoints_with_their_files(checkpoints, capsys):
    expired = Path(checkpoints["expired"].directory)
    call_command("purge_checkpoints")
    assert "purged 1 expired checkpoints" in capsys.readouterr().out
    assert set(Checkpoint.objects.values_list("name", flat=True)) == {"later", "forever"}
    assert not expired.exists() and not storage.archive_path(expired).exists()
    for name in ("later", "forever"):
        kept = Path(checkpoints[name].directory)
        assert (kept / "adapter_model.safetensors").exists() and storage.archive_path(kept).exists()


def test_runner_purge_is_throttled(checkpoints, monkeypatch):
    monkeypatch.setattr(retention, "_last_purge", float("-inf"))
    retention.purge_expired_if_due()
    assert not Checkpoint.objects.filter(name="expired").exists()
    Checkpoint.objects.filter(name="later").update(expires_at=timezone.now() - timedelta(seconds=1))
    retention.purge_expired_if_due()  # within the interval: nothing happens
    assert Checkpoint.objects.filter(name="later").exists()
    monkeypatch.setattr(retention, "_last_purge", float("-inf"))
    retention.purge_expired_if_due()
    assert not Checkpoint.objects.filter(name="later").exists()
