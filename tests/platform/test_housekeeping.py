"""Housekeeping between cycles: a checkpoint past its TTL is purged with its files (directory and
.tar), others stay; a session whose heartbeat stopped is finished and its queued samples cancelled,
its accepted training work kept; the chores run at most once per interval."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.utils import timezone

from training import storage
from training.models import Checkpoint, Operation, SamplingSession, Session, TrainingRun
from training.upkeep import housekeeping

pytestmark = pytest.mark.django_db


def _checkpoint(run: TrainingRun, name: str, root: Path, expires_in: timedelta | None) -> Checkpoint:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(b"weights")
    storage.archive_of(directory)
    return Checkpoint.objects.create(
        training_run=run,
        owner=run.owner,
        checkpoint_type="sampler",
        name=name,
        directory=str(directory),
        expires_at=timezone.now() + expires_in if expires_in is not None else None,
    )


@pytest.fixture
def checkpoints(tmp_path):
    user = User.objects.create(username="alice")
    run = TrainingRun.objects.create(
        id="s:train:0",
        session=Session.objects.create(id="s", owner=user),
        owner=user,
        base_model="tiny-llama",
        rank=4,
        seed=1,
    )
    return {
        name: _checkpoint(run, name, tmp_path, ttl)
        for name, ttl in (("expired", timedelta(seconds=-1)), ("later", timedelta(hours=1)), ("forever", None))
    }


def test_purge_deletes_expired_checkpoints_with_their_files(checkpoints, capsys):
    expired = Path(checkpoints["expired"].directory)
    call_command("purge_checkpoints")
    assert "purged 1 expired checkpoints" in capsys.readouterr().out
    assert set(Checkpoint.objects.values_list("name", flat=True)) == {"later", "forever"}
    assert not expired.exists() and not storage.archive_path(expired).exists()
    for name in ("later", "forever"):
        kept = Path(checkpoints[name].directory)
        assert (kept / "adapter_model.safetensors").exists() and storage.archive_path(kept).exists()


def test_chores_are_throttled(checkpoints, monkeypatch):
    monkeypatch.setattr(housekeeping, "_last_run", float("-inf"))
    housekeeping.run_if_due()
    assert not Checkpoint.objects.filter(name="expired").exists()
    Checkpoint.objects.filter(name="later").update(expires_at=timezone.now() - timedelta(seconds=1))
    housekeeping.run_if_due()  # within the interval: nothing happens
    assert Checkpoint.objects.filter(name="later").exists()
    monkeypatch.setattr(housekeeping, "_last_run", float("-inf"))
    housekeeping.run_if_due()
    assert not Checkpoint.objects.filter(name="later").exists()


def _work(session: Session) -> tuple[Operation, Operation]:
    """A queued sample and a queued training op in `session`."""
    user = session.owner
    run = TrainingRun.objects.create(
        id=f"{session.id}:train:0", session=session, owner=user, base_model="tiny-llama", rank=4, seed=1
    )
    sampler = SamplingSession.objects.create(
        id=f"{session.id}:sample:0", session=session, owner=user, base_model="tiny-llama"
    )
    sample = Operation.of_sampler(sampler, 0, {})
    step = Operation.of_run(run, "optim_step", 1, {})
    Operation.objects.bulk_create([sample, step])
    return sample, step


def test_a_silent_session_ends_and_its_queued_samples_are_cancelled(settings):
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, session_timeout_seconds=600)
    user = User.objects.create(username="bob")
    silent, alive = Session.objects.create(id="silent", owner=user), Session.objects.create(id="alive", owner=user)
    Session.objects.filter(id="silent").update(last_heartbeat_at=timezone.now() - timedelta(seconds=601))
    Session.objects.filter(id="alive").update(last_heartbeat_at=timezone.now() - timedelta(seconds=590))
    (silent_sample, silent_step), (alive_sample, alive_step) = _work(silent), _work(alive)

    assert housekeeping.expire_silent_sessions() == 1
    assert Session.objects.get(id="silent").finished_reason == "expired"
    assert Session.objects.get(id="alive").finished_reason == ""
    statuses = dict(Operation.objects.values_list("id", "status"))
    assert statuses == {
        silent_sample.id: "cancelled",
        silent_step.id: "queued",  # accepted training work is kept
        alive_sample.id: "queued",
        alive_step.id: "queued",
    }
    assert Operation.objects.get(id=silent_sample.id).error == "session expired: no heartbeat"
    assert housekeeping.expire_silent_sessions() == 0  # finished sessions are not expired again
