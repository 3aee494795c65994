"""A small in-process fake of the platform's JSON wire, served through `httpx.MockTransport`, for
SDK tests that need no real server: it records every request, finishes futures at once (or after
some `try_again` answers, or `finish_after` seconds, long-polled like the real server's) and can be
told to fail the next requests of a path. Ids and answers
have the real server's shapes: the server, never the SDK, makes model and sampler ids."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

import lorasmith

BASE_URL = "http://fake.lorasmith.test"
API_KEY = "tml-fake"
Failure = Any  # an httpx.Response to answer with, or an exception to raise


@dataclass
class Call:
    path: str
    body: dict


@dataclass
class FakeServer:
    pending_polls: int = 0  # `try_again` answers before a future's result is given
    finish_after: float = 0.0  # seconds from a future's creation until it is finished
    long_poll: float = 25.0  # how long retrieve_future holds an unfinished future before `try_again`
    finished_at: dict[str, float] = field(default_factory=dict)  # request_id -> time.monotonic() it finishes
    delays: dict[int, float] = field(default_factory=dict)  # seq_id -> seconds the POST takes
    calls: list[Call] = field(default_factory=list)
    failures: dict[str, list[Failure]] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)  # request_id -> result body
    polls: dict[str, int] = field(default_factory=dict)
    forward_logprobs: Callable[[dict], list[float]] | None = None
    sessions: dict[str, str] = field(default_factory=dict)  # model_id -> the session that made it

    def client(self, base_url: str = BASE_URL, **kwargs) -> lorasmith.ServiceClient:
        kwargs.setdefault("use_websocket", False)
        return lorasmith.ServiceClient(
            base_url=base_url, api_key=API_KEY, http_transport=httpx.MockTransport(self.handle), **kwargs
        )

    def fail_next(self, path: str, *failures: Failure) -> None:
        self.failures.setdefault(path, []).extend(failures)

    def bodies(self, path: str) -> list[dict]:
        return [c.body for c in self.calls if c.path == path]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1/")
        body = json.loads(request.content) if request.content else {}
        self.calls.append(Call(path, body))
        if self.failures.get(path):
            failure = self.failures[path].pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        if "seq_id" in body and body["seq_id"] in self.delays and path != "asample":
            await asyncio.sleep(self.delays[body["seq_id"]])
        answer = getattr(self, "do_" + path.replace("/", "_").replace("-", "_"), None)
        if answer is None:
            return httpx.Response(404, json={"detail": f"fake server has no {path}"})
        body = answer(body)
        return httpx.Response(200, json=await body if inspect.isawaitable(body) else body)

    def future(self, result: Any, **extra) -> dict:
        request_id = f"req-{len(self.results)}"
        self.results[request_id] = result
        self.finished_at[request_id] = time.monotonic() + self.finish_after
        return {"request_id": request_id, **extra}

    # ---- endpoints -----------------------------------------------------------------------------

    def do_client_config(self, body):
        return {"pjwt_auth_enabled": False}

    def do_create_session(self, body):
        return {"session_id": "sess"}

    async def do_retrieve_future(self, body):
        request_id = body["request_id"]
        self.polls[request_id] = self.polls.get(request_id, 0) + 1
        try_again = {"type": "try_again", "request_id": request_id, "queue_state": "active"}
        if self.polls[request_id] <= self.pending_polls:
            return try_again
        left = self.finished_at[request_id] - time.monotonic()
        if left > self.long_poll:
            await asyncio.sleep(self.long_poll)
            return try_again
        await asyncio.sleep(max(left, 0))
        return self.results[request_id]

    def new_model(self, body: dict, result: dict) -> dict:
        """A model's seq 0 (create_model, or load_weights without a model_id), answered as the real
        server does: the handle and the result both carry the new model's id."""
        model_id = f"{body['session_id']}:train:{body['model_seq_id']}"
        self.sessions[model_id] = body["session_id"]
        return self.future({**result, "model_id": model_id}, model_id=model_id)

    def do_create_model(self, body):
        return self.new_model(body, {"type": "create_model"})

    def do_load_weights(self, body):
        result = {"path": body["path"], "type": "load_weights"}
        if "model_id" in body:  # into an existing model, at its seq_id
            return self.future({**result, "model_id": body["model_id"]}, model_id=body["model_id"])
        return self.new_model(body, result)

    def do_get_info(self, body):
        return {
            "model_id": body["model_id"],
            "is_lora": True,
            "lora_rank": 4,
            "model_data": {"arch": "llama", "model_name": "tiny-llama", "tokenizer_id": "tiny-llama"},
        }

    def do_forward_backward(self, body):
        outputs = []
        for datum in body["data"]:
            targets = datum["loss_fn_inputs"]["target_tokens"]["data"]
            logprobs = self.forward_logprobs(datum) if self.forward_logprobs else [-float(t) for t in targets]
            outputs.append({"logprobs": {"data": logprobs, "dtype": "float32", "shape": [len(logprobs)]}})
        loss = -sum(sum(o["logprobs"]["data"]) for o in outputs)
        return self.future(
            {
                "loss_fn_output_type": "ArrayRecord",
                "loss_fn_outputs": outputs,
                "metrics": {
                    "loss:sum": loss,
                    "datums:mean": float(len(outputs)),
                    "seq:max": float(body["seq_id"]),
                    "seq:min": float(body["seq_id"]),
                },
            }
        )

    def do_optim_step(self, body):
        return self.future({"metrics": {"grad_norm:mean": 1.0}})

    def do_save_weights_for_sampler(self, body):
        if "sampling_session_seq_id" in body:  # an ephemeral sampler, named by the model's session
            sampler_id = f"{self.sessions[body['model_id']]}:sample:{body['sampling_session_seq_id']}"
            return self.future({"path": None, "sampling_session_id": sampler_id, "type": "save_weights_for_sampler"})
        return self.future(
            {"path": f"tinker://{body['model_id']}/sampler_weights/{body['path']}", "type": "save_weights_for_sampler"}
        )

    def do_create_sampling_session(self, body):
        return {"sampling_session_id": f"sampler-{body['sampling_session_seq_id']}"}

    def do_asample(self, body):
        n = body["num_samples"]
        prompt = [t for chunk in body["prompt"]["chunks"] for t in chunk["tokens"]]
        return self.future(
            {
                "sequences": [{"tokens": [7, 8], "logprobs": [-0.5, -0.25], "stop_reason": "length"}] * n,
                "prompt_logprobs": [None] + [-1.0] * (len(prompt) - 1) if body["prompt_logprobs"] else None,
                "topk_prompt_logprobs": None,
                "prompt_cache_hit_tokens": 0,
            },
            sample_sequence_ids=[f"s{i}" for i in range(n)],
        )

    def do_session_heartbeat(self, body):
        return {"type": "session_heartbeat"}

    def do_sessions_sess_finish(self, body):
        return {}
