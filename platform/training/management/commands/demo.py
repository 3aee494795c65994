"""`manage.py demo`: start the embedded service on a free port, then train tiny-llama over plain
HTTP (the Tinker JSON wire), sample from the result and download it as a PEFT adapter."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.core.management.base import BaseCommand

from accounts.services import ensure_user, issue_api_key
from gpu_runner.base_model import resolve_model_dir
from lorasmith_server.migrations_at_start import ensure_migrated

TEXT = "User: What is two plus two?\nAssistant: Two plus two is four."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Command(BaseCommand):
    help = "Run the service in embedded mode and train, sample and download a LoRA over HTTP."

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=20)

    def handle(self, steps, **options):
        ensure_migrated()
        key = issue_api_key(ensure_user("demo"), "demo")
        port = free_port()
        env = {**os.environ, "LORASMITH_DATA_DIR": str(settings.DATA_DIR)}
        server = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(port)], cwd=settings.REPO_ROOT, env=env
        )
        try:
            self._run(f"http://127.0.0.1:{port}/api/v1", key, steps)
        finally:
            server.terminate()
            server.wait(timeout=30)

    def _run(self, base: str, key: str, steps: int) -> None:
        client = httpx.Client(headers={"X-API-Key": key}, timeout=60)

        def call(path: str, body: dict) -> dict:
            response = client.post(f"{base}/{path}", json=body)
            response.raise_for_status()
            return response.json()

        def result(handle: dict) -> dict:
            while True:
                answer = call("retrieve_future", {"request_id": handle["request_id"]})
                if answer.get("type") != "try_again":
                    if "error" in answer:
                        raise RuntimeError(answer["error"])
                    return answer

        for _ in range(240):  # the server migrates and loads the engine first
            try:
                if client.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("the embedded service did not come up")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir("tiny-llama", settings.DATA_DIR))
        tokens = tokenizer(TEXT)["input_ids"]
        prompt_len = len(tokenizer(TEXT.split("Assistant:")[0] + "Assistant:")["input_ids"])
        weights = [0.0 if i + 1 < prompt_len else 1.0 for i in range(len(tokens) - 1)]
        datum = {
            "model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]},
            "loss_fn_inputs": {
                "target_tokens": {"data": tokens[1:], "dtype": "int64", "shape": [len(tokens) - 1]},
                "weights": {"data": weights, "dtype": "float32", "shape": [len(weights)]},
            },
        }
        session = call("create_session", {"tags": ["demo"], "user_metadata": {}, "sdk_version": "demo"})["session_id"]
        model = call(
            "create_model",
            {
                "session_id": session,
                "model_seq_id": 0,
                "base_model": "tiny-llama",
                "lora_config": {"rank": 16, "seed": 0},
            },
        )
        model_id = result(model)["model_id"]
        self.stdout.write(f"training {model_id} on: {TEXT!r}")
        seq = 1
        for step in range(steps):
            fb = call(
                "forward_backward", {"model_id": model_id, "seq_id": seq, "data": [datum], "loss_fn": "cross_entropy"}
            )
            opt = call("optim_step", {"model_id": model_id, "seq_id": seq + 1, "adam_params": {"learning_rate": 5e-3}})
            seq += 2
            loss = result(fb)["metrics"]["loss:sum"]
            result(opt)
            self.stdout.write(f"  step {step + 1:2d}  loss {loss:8.4f}")
        saved = result(call("save_weights_for_sampler", {"model_id": model_id, "seq_id": seq, "path": "demo"}))
        sampler = call(
            "create_sampling_session",
            {"session_id": session, "sampling_session_seq_id": 0, "model_path": saved["path"]},
        )["sampling_session_id"]
        prompt = tokens[:prompt_len]
        sample = result(
            call(
                "asample",
                {
                    "sampling_session_id": sampler,
                    "seq_id": 0,
                    "num_samples": 1,
                    "prompt": {"chunks": [{"type": "encoded_text", "tokens": prompt}]},
                    "sampling_params": {"max_tokens": 12, "temperature": 0.0},
                },
            )
        )
        completion = tokenizer.decode(sample["sequences"][0]["tokens"], skip_special_tokens=True)
        self.stdout.write(f"greedy sample after training: {completion!r}")
        export = result(call("save_weights_external", {"model_id": model_id, "seq_id": seq + 1, "path": "demo"}))
        run_id, _, checkpoint_id = export["path"].removeprefix("tinker://").partition("/")
        urls = client.get(f"{base}/training_runs/{run_id}/checkpoints/{checkpoint_id}/external_weights_urls").json()
        target = Path(tempfile.mkdtemp(prefix="lorasmith-demo-adapter-"))
        for name, url in urls["urls"].items():
            (target / name).write_bytes(httpx.get(url).content)
        self.stdout.write(f"PEFT adapter downloaded to {target}: {sorted(p.name for p in target.iterdir())}")
