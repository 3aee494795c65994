"""SamplingClient: sampling and prompt scoring against a base model or sampler weights."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

from ._internal import background
from .futures import APIFuture, ClientFutureCompat
from .types import ModelInput, SampleResponse, SamplingParams


class SamplingClient(ClientFutureCompat):
    def __init__(self, service, sampling_session_id: str, base_model: str | None = None):
        self.service = service
        self.transport = service.transport
        self.sampling_session_id = sampling_session_id
        self._base_model = base_model
        self._seq = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def for_session(cls, service, sampling_session_id: str, base_model: str | None = None) -> SamplingClient:
        return cls(service, sampling_session_id, base_model)

    def sample(
        self,
        prompt: ModelInput,
        num_samples: int = 1,
        sampling_params: SamplingParams | None = None,
        include_prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: Any = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
    ) -> APIFuture[SampleResponse]:
        """Tinker's signature. `prompt_logprobs_last_n` keeps prompt logprobs for the last N
        positions only; the server refuses the options it does not implement (400 naming them)."""
        with self._lock:
            seq = next(self._seq)
        body = {
            "num_samples": num_samples,
            "prompt": prompt.model_dump(mode="json"),
            "sampling_params": (sampling_params or SamplingParams()).model_dump(exclude_none=True),
            "sampling_session_id": self.sampling_session_id,
            "seq_id": seq,
            "prompt_logprobs": include_prompt_logprobs,
            "topk_prompt_logprobs": topk_prompt_logprobs,
            "type": "sample",
        }
        extras = {
            "topk_sample_logprobs": topk_sample_logprobs,
            "target_prompt_logprobs": target_prompt_logprobs,
            "prompt_alt_tokens_k": prompt_alt_tokens_k,
            "prompt_logprobs_last_n": prompt_logprobs_last_n,
        }
        body.update({k: v for k, v in extras.items() if v})  # only what differs from the defaults

        async def go():
            handle = await self.transport.request("POST", "asample", body)
            result = await self.transport.wait_result(handle["request_id"])
            for sequence, sequence_id in zip(result["sequences"], handle.get("sample_sequence_ids") or []):
                sequence["sequence_id"] = sequence_id
            return result

        return APIFuture(background.submit(go()), SampleResponse.model_validate)

    def compute_logprobs(
        self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> APIFuture[list[float | None]]:
        future = self.sample(
            prompt,
            1,
            SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
        )
        return APIFuture(future.future(), lambda raw: SampleResponse.model_validate(raw).prompt_logprobs)

    async def sample_async(self, *args, **kwargs) -> SampleResponse:
        return await self.sample(*args, **kwargs)

    async def compute_logprobs_async(
        self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> list[float | None]:
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n)

    def get_base_model(self) -> str:
        if self._base_model is None:
            info = background.run(self.transport.request("GET", f"samplers/{self.sampling_session_id}"))
            self._base_model = info["base_model"]
        return self._base_model

    def get_tokenizer(self):
        from .tokenizer import load_tokenizer

        return load_tokenizer(self.transport, self.get_base_model())

    async def get_tokenizer_async(self):
        return await asyncio.to_thread(self.get_tokenizer)
