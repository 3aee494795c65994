"""Fixtures for the dashboard's tests: users (one logged in), and runs, operations, metric points
and checkpoints made directly as rows (no runner), each owned by whoever the test says."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache

from accounts.models import ApiKey
from accounts.services import issue_api_key
from tests.platform.wire import InProcess, Wire
from training import dispatch, runners
from training.execution.cycle import execute_cycle
from training.models import Checkpoint, MetricPoint, Operation, Session, TrainingRun
from training.storage import checkpoint_directory

PASSWORD = "a-long-enough-password-1"
_seq = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()  # login failure counters live there
    yield
    cache.clear()


@pytest.fixture
def alice(db):
    return get_user_model().objects.create_user("alice", "alice@example.com", PASSWORD)


@pytest.fixture
def bob(db):
    return get_user_model().objects.create_user("bob", "bob@example.com", PASSWORD)


@pytest.fixture
def browser(client, alice):
    """A test client logged in as alice."""
    client.force_login(alice)
    return client


def make_run(owner, base_model: str = "tiny-llama", step: int = 0, finished: bool = False, **fields) -> TrainingRun:
    session = Session.objects.create(
        id=Session.new_id(), owner=owner, finished_reason="finished" if finished else "", display_name=""
    )
    return TrainingRun.objects.create(
        id=TrainingRun.make_id(session.id, 0),
        session=session,
        owner=owner,
        base_model=base_model,
        rank=fields.pop("rank", 8),
        seed=fields.pop("seed", 0),
        step=step,
        **fields,
    )


def make_operation(run: TrainingRun, kind: str = "forward_backward", status: str = "done", **fields) -> Operation:
    op = Operation.of_run(run, kind, fields.pop("seq_id", next(_seq)), {}, status=status, **fields)
    op.save(force_insert=True)
    return op


def add_points(run: TrainingRun, step: int, values: dict[str, float]) -> list[MetricPoint]:
    return MetricPoint.objects.bulk_create(
        [MetricPoint(training_run=run, step=step, name=name, value=v) for name, v in values.items()]
    )


def make_checkpoint(run: TrainingRun, name: str = "ckpt", kind: str = "sampler", files: bool = True, **fields):
    directory = checkpoint_directory(run.owner_id, run.id, kind, name)
    if files:
        directory.mkdir(parents=True, exist_ok=True)
        (Path(directory) / "adapter_model.safetensors").write_bytes(b"weights")
    return Checkpoint.objects.create(
        training_run=run, owner=run.owner, checkpoint_type=kind, name=name, directory=str(directory), **fields
    )


@pytest.fixture
def data_dir(settings, tmp_path):
    """Checkpoint files of this test under its own tmp dir."""
    settings.DATA_DIR = tmp_path
    return tmp_path


@pytest.fixture
def runner(monkeypatch):
    """Cycles run at once, in process, inside the request that dispatched them (the real engine,
    tiny-llama): a submitted operation is finished when its POST returns."""
    runners.register("tiny-llama")
    monkeypatch.setattr(
        dispatch, "_send", lambda runner, cycle_id, op_ids: execute_cycle(runner.id, runner.epoch, cycle_id, op_ids)
    )


@pytest.fixture
def api_of(db):
    """The API in process for one of a user's keys: `api_of(user, "laptop")` -> (Wire, key row)."""

    def make(user, name: str = "test"):
        secret = issue_api_key(user, name)
        return Wire(InProcess(secret)), ApiKey.objects.get(user=user, name=name)

    return make
