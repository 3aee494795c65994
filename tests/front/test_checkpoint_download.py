"""Download: a redirect to a signed, expiring link to the checkpoint's .tar, which serves without
a login; training checkpoints are refused with a message; another user's private one is a 404."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from django.test import Client

from training.models import SamplingSession

from .conftest import make_checkpoint, make_run


def test_download_redirects_to_a_signed_archive(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "final")
    answer = browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/final/download/")
    assert answer.status_code == 302 and answer["Location"].startswith("http://testserver/files/")
    served = Client().get(answer["Location"].removeprefix("http://testserver"))
    assert served.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(b"".join(served.streaming_content))) as archive:
        assert archive.getnames() == ["adapter_model.safetensors"]


def test_training_checkpoints_are_not_downloadable(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "state", kind="training")
    answer = browser.get(f"/runs/{run.id}/checkpoints/weights/state/download/", follow=True)
    assert "not downloadable" in answer.content.decode()


def test_another_users_private_checkpoint_is_404(browser, bob, data_dir):
    run = make_run(bob)
    make_checkpoint(run, "secret")
    assert browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/secret/download/").status_code == 404
    assert browser.get(f"/runs/{run.id}/checkpoints/nonsense/secret/download/").status_code == 404


def test_a_published_checkpoint_downloads_for_everyone(browser, bob, data_dir):
    run = make_run(bob)
    make_checkpoint(run, "shared", public=True)
    assert browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/shared/download/").status_code == 302


def test_a_downloaded_adapter_names_the_served_base_model(browser, alice, api_of, runner, data_dir):
    """adapter_config.json says `tiny-llama`, the name the run was created with and the server
    serves, not the directory the server loaded the model from; for named and unnamed saves."""
    wire, _ = api_of(alice)
    model_id = wire.model(wire.session())
    wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 1, "path": "s1"}))
    wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": 2, "path": "e1"}))
    unnamed = wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 3}))

    for segment, name in (("sampler_weights", "s1"), ("external_weights", "e1")):
        link = browser.get(f"/runs/{model_id}/checkpoints/{segment}/{name}/download/")["Location"]
        served = Client().get(link.removeprefix("http://testserver"))
        with tarfile.open(fileobj=io.BytesIO(b"".join(served.streaming_content))) as archive:
            config = json.load(archive.extractfile("adapter_config.json"))
        assert config["base_model_name_or_path"] == "tiny-llama", segment
    sampler = SamplingSession.objects.get(id=unnamed["sampling_session_id"])
    assert json.loads((Path(sampler.weights_dir) / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "tiny-llama"
    )
