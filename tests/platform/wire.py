"""A tiny JSON-wire client for platform tests: plain HTTP shapes, no SDK, nothing from the
server's code. `Wire` speaks to a live server (an httpx client) or in process (`InProcess`, the
Django test client through DRF), so every test builds requests the same way."""

from __future__ import annotations

import time
from typing import Any

import httpx
from rest_framework.test import APIClient

TOKENS = [3, 320, 265, 203, 44, 538, 83, 685, 4]  # a short sentence in the tiny models' vocabulary


def tensor(data: list, dtype: str) -> dict:
    return {"data": data, "dtype": dtype, "shape": [len(data)]}


def datum_json(sequence: list[int], weights: list[float] | None = None) -> dict:
    n = len(sequence) - 1
    return {
        "model_input": {"chunks": [{"type": "encoded_text", "tokens": sequence[:-1]}]},
        "loss_fn_inputs": {
            "target_tokens": tensor(sequence[1:], "int64"),
            "weights": tensor(weights or [1.0] * n, "float32"),
        },
    }


def prompt_json(tokens: list[int]) -> dict:
    return {"chunks": [{"type": "encoded_text", "tokens": tokens}]}


class InProcess:
    """The httpx calls `Wire` makes, served in process by Django's test client for one API key."""

    def __init__(self, api_key: str):
        self.client = APIClient()
        self.client.credentials(HTTP_X_API_KEY=api_key)

    def post(self, path: str, json: Any = None) -> Any:
        return self.client.post(f"/api/v1/{path}", json, format="json")

    def get(self, path: str) -> Any:
        return self.client.get(f"/api/v1/{path}")


class Wire:
    def __init__(self, client: httpx.Client | InProcess):
        self.client = client

    def send(self, path: str, body: dict) -> Any:
        """POST `body` and return the raw response, whatever its status."""
        return self.client.post(path, json=body)

    def post(self, path: str, body: dict, expect: int = 200) -> dict:
        response = self.send(path, body)
        assert response.status_code == expect, (path, response.status_code, response.content)
        return response.json()

    def get(self, path: str, expect: int = 200) -> dict:
        response = self.client.get(path)
        assert response.status_code == expect, (path, response.status_code, response.content)
        return response.json()

    def result(self, handle: dict, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.post("retrieve_future", {"request_id": handle["request_id"]})
            if answer.get("type") != "try_again":
                return answer
        raise AssertionError(f"future {handle['request_id']} did not resolve in {timeout} s")

    def session(self) -> str:
        return self.post("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "test"})["session_id"]

    def create_model(self, session: str, seq: int = 0, rank: int = 8, seed: int = 1, **metadata: Any) -> Any:
        """The raw answer to create_model (not waited for)."""
        return self.send(
            "create_model",
            {
                "session_id": session,
                "model_seq_id": seq,
                "base_model": "tiny-llama",
                "lora_config": {"rank": rank, "seed": seed},
                "user_metadata": metadata,
            },
        )

    def model(self, session: str, seq: int = 0, rank: int = 8, seed: int = 1, **metadata: Any) -> str:
        """A created model's id, once its creation has finished."""
        response = self.create_model(session, seq, rank, seed, **metadata)
        assert response.status_code == 200, response.content
        handle = response.json()
        assert self.result(handle) == {"model_id": handle["model_id"], "type": "create_model"}
        return handle["model_id"]

    def forward_backward(self, model_id: str, seq_id: int, data: list[dict] | None = None, **extra: Any) -> dict:
        return self.post("forward_backward", self.forward_backward_body(model_id, seq_id, data, **extra))

    @staticmethod
    def forward_backward_body(model_id: str, seq_id: int, data: list[dict] | None = None, **extra: Any) -> dict:
        return {
            "model_id": model_id,
            "seq_id": seq_id,
            "data": data or [datum_json(TOKENS)],
            "loss_fn": extra.pop("loss_fn", "cross_entropy"),
            **extra,
        }

    def optim_step(self, model_id: str, seq_id: int, lr: float = 1e-2) -> dict:
        return self.post("optim_step", {"model_id": model_id, "seq_id": seq_id, "adam_params": {"learning_rate": lr}})

    def train(self, model_id: str, first_seq: int, steps: int, sequence: list[int]) -> tuple[list[float], int]:
        """`steps` of forward_backward (one datum of `sequence`) + optim_step from `first_seq`:
        each step's loss:sum, and the next free seq_id."""
        losses, seq = [], first_seq
        for _ in range(steps):
            fb = self.forward_backward(model_id, seq, [datum_json(sequence)])
            self.optim_step(model_id, seq + 1)
            losses.append(self.result(fb)["metrics"]["loss:sum"])
            seq += 2
        return losses, seq

    def sampler(self, session: str, seq: int = 0, **source: str) -> str:
        """A sampling session on `base_model` (default tiny-llama) or `model_path`."""
        body = {"session_id": session, "sampling_session_seq_id": seq, **(source or {"base_model": "tiny-llama"})}
        return self.post("create_sampling_session", body)["sampling_session_id"]

    @staticmethod
    def sample_body(sampler_id: str, seq_id: int = 0, tokens: list[int] | None = None, **params: Any) -> dict:
        return {
            "sampling_session_id": sampler_id,
            "seq_id": seq_id,
            "num_samples": 1,
            "prompt": prompt_json(tokens or TOKENS),
            "sampling_params": {"max_tokens": 2, **params},
        }
