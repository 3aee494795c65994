"""A tiny JSON-wire client for platform tests: plain httpx, no SDK, nothing from the server's code."""

from __future__ import annotations

import time

import httpx


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


class Wire:
    def __init__(self, client: httpx.Client):
        self.client = client

    def post(self, path: str, body: dict, expect: int = 200) -> dict:
        response = self.client.post(path, json=body)
        assert response.status_code == expect, (path, response.status_code, response.text)
        return response.json()

    def get(self, path: str, expect: int = 200) -> dict:
        response = self.client.get(path)
        assert response.status_code == expect, (path, response.status_code, response.text)
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

    def model(self, session: str, seq: int = 0, rank: int = 8, seed: int = 1, **metadata) -> str:
        handle = self.post(
            "create_model",
            {
                "session_id": session,
                "model_seq_id": seq,
                "base_model": "tiny-llama",
                "lora_config": {"rank": rank, "seed": seed},
                "user_metadata": metadata,
            },
        )
        assert self.result(handle) == {"model_id": handle["model_id"], "type": "create_model"}
        return handle["model_id"]

    def forward_backward(self, model_id: str, seq_id: int, data: list[dict], **extra) -> dict:
        return self.post(
            "forward_backward",
            {
                "model_id": model_id,
                "seq_id": seq_id,
                "data": data,
                "loss_fn": extra.pop("loss_fn", "cross_entropy"),
                **extra,
            },
        )

    def optim_step(self, model_id: str, seq_id: int, lr: float = 1e-2) -> dict:
        return self.post("optim_step", {"model_id": model_id, "seq_id": seq_id, "adam_params": {"learning_rate": lr}})
