"""Unchanged `tinker-cookbook` 0.5.8 recipes against a live Lorasmith, offline (issue 12): the
tiny model is served by its local path (`LORASMITH_BASE_MODELS=<dir>`), so the cookbook's own
`get_tokenizer(model_name)` loads it from disk, with the `role_colon` renderer. The server keeps
at most 3 operations pending per user, so the recipes' pipelined requests meet 429s with
`retry-after-ms`, which the SDK must wait out; and `client/config` turns `proto_compress_fwdbwd`
on, so every forward_backward body arrives zstd-compressed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpu_runner import describe_base_model
from tests.conftest import embedded_server

from .conftest import run_tinker_process, tinker_env

MAX_PENDING = 3
RETRY_SECONDS = 2.0  # training.intake.quotas.RETRY_PENDING_SECONDS, as the 429s announce it


@pytest.fixture(scope="module")
def path_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("path-served")
    model_dir = describe_base_model("tiny-llama", data_dir).model_dir  # built before the server reads the list
    extra = {
        "LORASMITH_BASE_MODELS": model_dir,
        "LORASMITH_MAX_PENDING_OPERATIONS": str(MAX_PENDING),
        "LORASMITH_PROTO_COMPRESS_FWDBWD": "true",  # the SDK then sends zstd forward_backward bodies
    }
    with embedded_server(data_dir, extra) as server:
        server.model_dir = model_dir
        yield server


def _recipe(tinker_python, server, module: str, log_path: Path, *flags: str, **env: str):
    args = ["-m", f"tinker_cookbook.recipes.{module}", f"model_name={server.model_dir}", "renderer_name=role_colon"]
    args += ["lora_rank=8", f"log_path={log_path}", "behavior_if_log_dir_exists=delete", *flags]
    return run_tinker_process(tinker_python, server, args, timeout=600, **env)


def _metrics(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # ~90 s with its set-up on 2 cores; `make test` (CI) runs it
def test_chat_sl_on_the_cookbooks_conversations_lowers_the_loss(tinker_python, path_server, tmp_path):
    [data] = tinker_python.parent.parent.glob(
        "lib/python*/site-packages/tinker_cookbook/example_data/conversations.jsonl"
    )
    done = _recipe(
        tinker_python,
        path_server,
        "chat_sl.train",
        tmp_path / "chat_sl",
        f"dataset={data}",
        "batch_size=8",
        "max_steps=6",
        "learning_rate=1e-3",
        "max_length=256",
        "eval_every=0",
        "save_every=0",
        TINKER_LOG="debug",
    )
    rows = _metrics(tmp_path / "chat_sl")
    assert [row["step"] for row in rows] == list(range(6))
    assert rows[-1]["train_mean_nll"] < rows[0]["train_mean_nll"]
    # pipelined steps went past the pending quota: each 429 was waited out as long as it asked
    assert "Retrying due to status code 429" in done.stderr
    assert f"in {RETRY_SECONDS:f} seconds" in done.stderr
    assert "'Content-Encoding': 'zstd'" in done.stderr  # the SDK's debug log of its request headers


@pytest.mark.slow  # ~70 s with its set-up; `make test` (CI) runs it
def test_math_rl_arithmetic_with_the_default_loss(tinker_python, path_server, tmp_path):
    _recipe(
        tinker_python,
        path_server,
        "math_rl.train",
        tmp_path / "math_rl",
        "env=arithmetic",
        "group_size=4",
        "groups_per_batch=4",
        "max_steps=3",
        "learning_rate=1e-3",
        "eval_every=0",
        "save_every=0",
    )
    rows = _metrics(tmp_path / "math_rl")
    assert len(rows) == 3
    for row in rows:
        # arithmetic: 1 for a right answer, a small penalty for a malformed one
        assert -1.0 <= row["env/all/reward/total"] <= 1.0 and row["env/all/total_episodes"] == 16
    checkpoints = (tmp_path / "math_rl" / "checkpoints.jsonl").read_text()
    assert "sampler_weights/final" in checkpoints


def test_math_rl_with_stable_reinforce_is_refused_naming_the_alternative(tinker_python, path_server, tmp_path):
    import subprocess

    args = ["-m", "tinker_cookbook.recipes.math_rl.train", f"model_name={path_server.model_dir}"]
    args += ["renderer_name=role_colon", "lora_rank=8", "env=arithmetic", "group_size=4", "groups_per_batch=2"]
    args += [
        "max_steps=1",
        "loss_fn=stable_reinforce",
        f"log_path={tmp_path / 'sr'}",
        "behavior_if_log_dir_exists=delete",
    ]
    done = subprocess.run(
        [str(tinker_python), *args], env=tinker_env(path_server), capture_output=True, text=True, timeout=600
    )
    assert done.returncode != 0
    assert "'stable_reinforce' is not supported here" in done.stderr and "use importance_sampling" in done.stderr
