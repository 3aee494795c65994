"""Signed URLs reach checkpoints and served tokenizers only, never the rest of the data dir, even
when correctly signed, and the signing key is never a public default; a base model named by a
local path (slashes and all) serves its tokenizer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from django.conf import settings

from training import base_models, storage

pytestmark = pytest.mark.django_db


def test_without_secret_key_a_random_one_is_kept_in_the_data_dir(tmp_path):
    from lorasmith_server.settings import _persistent_secret

    first = _persistent_secret(tmp_path / "secret_key")
    assert len(first) >= 50 and _persistent_secret(tmp_path / "secret_key") == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert _persistent_secret(tmp_path / "other") != first


def test_a_signed_token_for_a_file_outside_checkpoints_is_refused():
    secret = settings.DATA_DIR / "secret_key"
    secret.touch()
    token, _ = storage.sign_file(secret)
    assert storage.open_signed(token) is None
    checkpoint = settings.DATA_DIR / "checkpoints" / "0" / "run" / "weights" / "a" / "x.safetensors"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"weights")
    token, _ = storage.sign_file(checkpoint)
    assert storage.open_signed(token) == (checkpoint.resolve(), "x.safetensors")


def test_tokenizer_of_a_base_model_served_by_local_path(settings, api):
    local = base_models.info("tiny-llama").model_dir  # a plain HF directory, served here by its path
    settings.LORASMITH = dataclasses.replace(settings.LORASMITH, base_models=("tiny-llama", local))
    answer = api.client.get(f"base_models/{local.replace('/', '%2F')}/tokenizer")
    assert answer.status_code == 200, answer.content
    files = answer.json()["files"]
    assert "tokenizer.json" in files
    token = files["tokenizer.json"].split("/files/")[1].split("/")[0]
    assert storage.open_signed(token) == ((Path(local) / "tokenizer.json").resolve(), "tokenizer.json")
    download = api.client.client.get(files["tokenizer.json"].split("testserver")[1])
    assert b"".join(download.streaming_content) == (Path(local) / "tokenizer.json").read_bytes()
