"""Checkpoints cannot collide with archives, and a save never leaves a mixture (issue 19, holes 8
and 9): `X` and `X.tar` are both saved, listed, downloaded and deleted without a 5xx; a save
killed midway through an overwrite leaves the listed checkpoint whole, at the step it was."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest
from safetensors.torch import load_file

import gpu_runner.checkpoints
from gpu_runner import Engine
from gpu_runner.types import LoadState, LoraSpec, SaveState
from tests.engine.reference import random_sequence, sft_datum, train_steps
from training import storage
from training.execution import outcomes
from training.models import Checkpoint, Operation

from .wire import Wire

NAMES = ("X", "X.tar")


def _tar_members(url: str) -> set[str]:
    response = httpx.get(url, timeout=60)
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content)) as tar:
        return set(tar.getnames())


@pytest.mark.parametrize("segment", ["external_weights", "sampler_weights"])  # the downloadable ones
def test_a_checkpoint_named_like_another_ones_archive_is_no_collision(live_server_embedded, segment):
    server = live_server_embedded
    wire = Wire(server.client())
    model = wire.model(wire.session(), seed=4)
    kind = "save_weights_external" if segment == "external_weights" else "save_weights_for_sampler"
    with server.client() as client:
        for seq, name in enumerate(NAMES + NAMES, start=1):  # each saved, its archive built, saved again
            body = {"model_id": model, "seq_id": seq, "path": name, "overwrite": seq > len(NAMES)}
            saved = wire.result(wire.post(kind, body))
            assert saved.get("path") == f"tinker://{model}/{segment}/{name}", saved
            archive = client.get(f"training_runs/{model}/checkpoints/{segment}/{name}/archive")
            assert archive.status_code == 200, archive.text
            assert _tar_members(archive.json()["url"]) == {"adapter_config.json", "adapter_model.safetensors"}
        listed = client.get(f"training_runs/{model}/checkpoints").json()["checkpoints"]
        assert sorted(c["checkpoint_id"] for c in listed) == [f"{segment}/{n}" for n in NAMES]
        for name in NAMES:
            urls = client.get(f"training_runs/{model}/checkpoints/{segment}/{name}/external_weights_urls")
            assert urls.status_code == 200 and urls.json()["urls"], urls.text
            deleted = client.delete(f"training_runs/{model}/checkpoints/{segment}/{name}")
            assert deleted.status_code == 204, deleted.text
        assert client.get(f"training_runs/{model}/checkpoints").json()["checkpoints"] == []


class Killed(BaseException):
    """The runner process dying mid-save (no except clause of the service sees it)."""


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine("tiny-llama", data_dir=tmp_path_factory.mktemp("engine"))


def _save(engine: Engine, op: Operation, run_id: str) -> None:
    """What the runner does for a named training save: the engine writes the directory storage
    gives, then the outcome records the checkpoint."""
    directory = storage.checkpoint_directory(op.owner_id, run_id, "weights", op.payload["name"])
    (result,) = engine.run_cycle([SaveState(run_id, directory, include_optimizer=True)])
    assert result.ok, result.error
    outcomes.checkpoint_saved(op, result.output)


def _files(directory) -> dict:
    return {name: load_file(str(directory / name)) for name in ("adapter.safetensors", "optimizer.safetensors")}


def _same(left: dict, right: dict) -> bool:
    return left.keys() == right.keys() and all(
        a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a) for a, b in zip(left.values(), right.values())
    )


@pytest.mark.django_db
def test_a_save_killed_mid_overwrite_leaves_the_listed_checkpoint_whole(
    api, engine, tmp_path, monkeypatch, django_capture_on_commit_callbacks
):
    model_id = api.create_model(api.session()).json()["model_id"]
    engine.create_adapter(model_id, LoraSpec(rank=4, seed=9))
    data = [sft_datum(random_sequence(12, seed=5))]
    train_steps(engine, model_id, data, steps=1)
    (reference,) = engine.run_cycle([SaveState(model_id, tmp_path / "step-1")])  # step 1, saved elsewhere
    assert reference.ok
    first = api.post("save_weights", {"model_id": model_id, "seq_id": 1, "path": "ck"})
    _save(engine, Operation.objects.get(id=first["request_id"]), model_id)
    train_steps(engine, model_id, data, steps=1)  # step 2

    overwrite = api.post("save_weights", {"model_id": model_id, "seq_id": 2, "path": "ck", "overwrite": True})
    original_save_file = gpu_runner.checkpoints.save_file

    def dies_before_the_optimizer(tensors, filename, *args, **kwargs):
        if filename.endswith("optimizer.safetensors"):
            raise Killed  # the adapter file of step 2 is written, the optimizer's is not
        return original_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(gpu_runner.checkpoints, "save_file", dies_before_the_optimizer)
    with pytest.raises(Killed):
        _save(engine, Operation.objects.get(id=overwrite["request_id"]), model_id)
    monkeypatch.undo()

    (listed,) = api.get(f"training_runs/{model_id}/checkpoints")["checkpoints"]
    assert listed["checkpoint_id"] == "weights/ck"
    directory = Path(Checkpoint.objects.get(training_run_id=model_id, name="ck").directory)
    assert _same(_files(directory), _files(tmp_path / "step-1"))  # whole, and of one step
    loaded = engine.run_cycle([LoadState("reloaded", directory, include_optimizer=True)])
    assert loaded[0].ok, loaded[0].error

    # the overwrite retried (as a restarted runner would) replaces it whole, and the old version goes
    (step_2,) = engine.run_cycle([SaveState(model_id, tmp_path / "step-2")])
    assert step_2.ok
    with django_capture_on_commit_callbacks(execute=True):  # what happens once the row is committed
        _save(engine, Operation.objects.get(id=overwrite["request_id"]), model_id)
    replaced = Path(Checkpoint.objects.get(training_run_id=model_id, name="ck").directory)
    assert replaced != directory and not directory.exists()
    assert _same(_files(replaced), _files(tmp_path / "step-2"))
