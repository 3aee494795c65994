"""Download: the checkpoint's .tar, named after its run and checkpoint (issue 21), with its sha256;
training checkpoints are refused with a message; another user's private one is a 404. (The API's
archive link, signed and expiring, is tested with the API.)"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

from training.models import SamplingSession

from .conftest import make_checkpoint, make_run


def _archive(answer) -> tuple[str, bytes]:
    """(the attachment's file name, its bytes)."""
    assert answer.status_code == 200, answer.status_code
    name = re.fullmatch(r'attachment; filename="([^"]+)"', answer["Content-Disposition"])[1]
    return name, b"".join(answer.streaming_content)


def test_the_archive_is_named_after_its_run_and_checkpoint(browser, alice, data_dir):
    run = make_run(alice)
    make_checkpoint(run, "final")
    name, content = _archive(browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/final/download/"))
    assert name == f"{run.session_id.replace('-', '')[:8]}-final.tar"
    with tarfile.open(fileobj=io.BytesIO(content)) as archive:
        assert archive.getnames() == ["adapter_model.safetensors"]
        assert archive.extractfile("adapter_model.safetensors").read() == b"weights"


def test_a_named_run_and_an_export_name_the_archive_so(browser, alice, data_dir):
    run = make_run(alice)
    run.session.display_name = "cookbook.sl / my run"
    run.session.save(update_fields=["display_name"])
    make_checkpoint(run, "step-000080")
    make_checkpoint(run, "step-000080", kind="external")
    short = run.session_id.replace("-", "")[:8]
    sampler = browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/step-000080/download/")
    name, content = _archive(sampler)
    assert name == f"cookbook.sl-my-run-{short}-step-000080.tar"
    assert sampler["X-Checksum-Sha256"] == hashlib.sha256(content).hexdigest()
    name, _ = _archive(browser.get(f"/runs/{run.id}/checkpoints/external_weights/step-000080/download/"))
    assert name == f"cookbook.sl-my-run-{short}-step-000080-peft.tar"


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
    name, _ = _archive(browser.get(f"/runs/{run.id}/checkpoints/sampler_weights/shared/download/"))
    assert name.endswith("-shared.tar")


def test_a_downloaded_adapter_names_the_served_base_model(browser, alice, api_of, runner, data_dir):
    """adapter_config.json says `tiny-llama`, the name the run was created with and the server
    serves, not the directory the server loaded the model from; for named and unnamed saves."""
    wire, _ = api_of(alice)
    model_id = wire.model(wire.session())
    wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 1, "path": "s1"}))
    wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": 2, "path": "e1"}))
    unnamed = wire.result(wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 3}))

    for segment, name in (("sampler_weights", "s1"), ("external_weights", "e1")):
        _, content = _archive(browser.get(f"/runs/{model_id}/checkpoints/{segment}/{name}/download/"))
        with tarfile.open(fileobj=io.BytesIO(content)) as archive:
            config = json.load(archive.extractfile("adapter_config.json"))
        assert config["base_model_name_or_path"] == "tiny-llama", segment
    sampler = SamplingSession.objects.get(id=unnamed["sampling_session_id"])
    assert json.loads((Path(sampler.weights_dir) / "adapter_config.json").read_text())["base_model_name_or_path"] == (
        "tiny-llama"
    )
