"""Checkpoint lifecycle over the wire: save/load state (with and without optimizer), ephemeral
sampler weights, listing, TTL, delete, weights_info and the .tar archive."""

from __future__ import annotations

import io
import tarfile

import httpx
import pytest

from .wire import Wire

SEQUENCE = [3, 320, 265, 203, 44, 538, 83, 685, 4, 203, 3]


@pytest.fixture(scope="module")
def trained(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    session = wire.session()
    model_id = wire.model(session, seed=12)
    _, seq = wire.train(model_id, 1, 2, SEQUENCE)
    saved = wire.result(wire.post("save_weights", {"model_id": model_id, "seq_id": seq, "path": "step2"}))
    continued, _ = wire.train(model_id, seq + 1, 2, SEQUENCE)
    return {"wire": wire, "session": session, "model_id": model_id, "path": saved["path"], "continued": continued}


def test_create_via_load_with_optimizer_resumes_exactly(trained):
    wire = trained["wire"]
    assert trained["path"] == f"tinker://{trained['model_id']}/weights/step2"
    handle = wire.post(
        "load_weights",
        {"session_id": trained["session"], "model_seq_id": 5, "path": trained["path"], "optimizer": True},
    )
    model_id = f"{trained['session']}:train:5"
    assert handle["model_id"] == model_id
    assert wire.result(handle)["model_id"] == model_id
    resumed, _ = wire.train(model_id, 1, 2, SEQUENCE)
    assert resumed == trained["continued"]  # the same numbers, bit for bit, on CPU


def test_load_without_optimizer_restarts_the_moments(trained):
    wire = trained["wire"]
    handle = wire.post(
        "load_weights",
        {"session_id": trained["session"], "model_seq_id": 6, "path": trained["path"], "optimizer": False},
    )
    wire.result(handle)
    fresh_moments, _ = wire.train(handle["model_id"], 1, 2, SEQUENCE)
    assert fresh_moments[0] == pytest.approx(trained["continued"][0], rel=1e-6)  # same weights
    assert fresh_moments[1] != pytest.approx(trained["continued"][1], rel=1e-6)  # different Adam state


def test_ephemeral_sampler_weights_give_a_sampling_session(trained):
    wire = trained["wire"]
    model_id = wire.model(trained["session"], 7, seed=13)
    handle = wire.post(
        "save_weights_for_sampler",
        {"model_id": model_id, "seq_id": 1, "sampling_session_seq_id": 9, "kind": "snapshot"},
    )
    result = wire.result(handle)
    assert result["path"] is None and result["sampling_session_id"] == f"{trained['session']}:sample:9"
    sample = wire.result(
        wire.post(
            "asample",
            {
                "sampling_session_id": result["sampling_session_id"],
                "seq_id": 0,
                "num_samples": 1,
                "prompt": {"chunks": [{"type": "encoded_text", "tokens": SEQUENCE[:4]}]},
                "sampling_params": {"max_tokens": 3, "temperature": 0.0},
            },
        )
    )
    assert len(sample["sequences"][0]["tokens"]) == 3
    sampler = wire.get(f"samplers/{result['sampling_session_id']}")
    assert sampler["base_model"] == "tiny-llama"


def test_listing_ttl_info_archive_and_delete(live_server_embedded, trained):
    wire = trained["wire"]
    model_id = trained["model_id"]
    listed = wire.get(f"training_runs/{model_id}/checkpoints")["checkpoints"]
    assert [c["checkpoint_id"] for c in listed] == ["weights/step2"]
    assert listed[0]["checkpoint_type"] == "training" and listed[0]["size_bytes"] > 0
    run = wire.get(f"training_runs/{model_id}")
    assert run["training_run_id"] == model_id and run["last_checkpoint"]["tinker_path"] == trained["path"]
    checkpoint = f"training_runs/{model_id}/checkpoints/weights/step2"
    ttl = wire.client.put(f"{checkpoint}/ttl", json={"ttl_seconds": 7200}).json()
    assert ttl["expires_at"] is not None
    assert wire.client.put(f"{checkpoint}/ttl", json={"ttl_seconds": 5}).status_code == 400
    info = wire.post("weights_info", {"tinker_path": trained["path"]})
    assert info["base_model"] == "tiny-llama" and info["lora_rank"] == 8 and info["is_lora"] is True
    assert wire.client.get(f"{checkpoint}/archive").status_code == 400  # training state is not downloadable

    exported = wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": 10, "path": "x"}))
    archive = wire.get(f"training_runs/{model_id}/checkpoints/external_weights/x/archive")
    # named after its run, as the dashboard's download: <short run id>-<checkpoint>-peft.tar
    short = model_id.partition(":train:")[0].replace("-", "")[:8]
    assert archive["url"].endswith(f"/{short}-x-peft.tar")
    downloaded = httpx.get(archive["url"])
    assert f'filename="{short}-x-peft.tar"' in downloaded.headers["Content-Disposition"]
    with tarfile.open(fileobj=io.BytesIO(downloaded.content)) as tar:
        assert sorted(tar.getnames()) == ["adapter_config.json", "adapter_model.safetensors"]
    renamed = archive["url"].rsplit("/", 1)[0] + "/x.tar"  # the token grants one name only
    assert httpx.get(renamed).status_code == 403
    assert exported["path"].endswith("/external_weights/x")
    tar = next((live_server_embedded.data_dir / "checkpoints").rglob("x.tar"))
    assert wire.client.delete(f"training_runs/{model_id}/checkpoints/external_weights/x").status_code == 204
    assert not tar.exists() and not tar.with_suffix("").exists()  # the archive goes with the files
    assert wire.client.get(f"training_runs/{model_id}/checkpoints/external_weights/x/archive").status_code == 404
    everything = wire.get("checkpoints")
    assert trained["path"] in [c["tinker_path"] for c in everything["checkpoints"]]


def test_duplicate_checkpoint_name_is_refused(trained):
    wire = trained["wire"]
    response = wire.client.post("save_weights", json={"model_id": trained["model_id"], "seq_id": 30, "path": "step2"})
    assert response.status_code == 400 and response.json()["field"] == "path"


def test_expired_checkpoints_are_gone(live_server_embedded, trained):
    import sqlite3

    wire = trained["wire"]
    model_id = wire.model(trained["session"], 8, seed=14)
    saved = wire.result(
        wire.post("save_weights_for_sampler", {"model_id": model_id, "seq_id": 1, "path": "brief", "ttl_seconds": 3600})
    )
    checkpoint = f"training_runs/{model_id}/checkpoints/sampler_weights/brief"
    assert wire.client.get(f"{checkpoint}/archive").status_code == 200
    with sqlite3.connect(live_server_embedded.data_dir / "lorasmith.sqlite3") as db:  # let the hour pass
        db.execute("UPDATE training_checkpoint SET expires_at = '2000-01-01 00:00:00' WHERE name = 'brief'")
    assert wire.client.get(f"{checkpoint}/archive").status_code == 404
    assert "brief" not in str(wire.get(f"training_runs/{model_id}/checkpoints")) + str(wire.get("checkpoints"))
    refused = wire.client.post(
        "create_sampling_session",
        json={"session_id": trained["session"], "sampling_session_seq_id": 50, "model_path": saved["path"]},
    )
    assert refused.status_code == 404


def test_an_overwritten_checkpoint_archives_its_new_weights(live_server_embedded):
    wire = Wire(live_server_embedded.client())
    model_id = wire.model(wire.session(), seed=3)
    archive_url = f"training_runs/{model_id}/checkpoints/external_weights/y/archive"

    def archived_weights() -> bytes:
        with tarfile.open(fileobj=io.BytesIO(httpx.get(wire.get(archive_url)["url"]).content)) as tar:
            return tar.extractfile("adapter_model.safetensors").read()

    wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": 1, "path": "y"}))
    before = archived_weights()
    wire.train(model_id, 2, 1, SEQUENCE)
    wire.result(wire.post("save_weights_external", {"model_id": model_id, "seq_id": 4, "path": "y", "overwrite": True}))
    after = archived_weights()
    # one version on disk (the overwritten one went), holding what the archive holds
    (on_disk,) = (live_server_embedded.data_dir / "checkpoints").rglob(
        "external_weights/y/v-*/adapter_model.safetensors"
    )
    assert after != before and after == on_disk.read_bytes()
