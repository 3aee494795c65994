"""SamplingClient: sampling and prompt scoring against a base model or sampler weights."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import TYPE_CHECKING, Any, cast

from ._internal import background
from .futures import APIFuture, ClientFutureCompat
from .tokenizer import load_tokenizer
from .types import ModelInput, SampleResponse, SamplingParams, to_tensor_data

if TYPE_CHECKING:
    from .service import ServiceClient


class SamplingClient(ClientFutureCompat):
    """One sampler (sampling session) on the server: a base model, or a base model with sampler
    weights. Made by `ServiceClient.create_sampling_client` or
    `TrainingClient.save_weights_and_get_sampling_client`.

    Example:
        sampler = service.create_sampling_client(base_model="tiny-llama")
        response = sampler.sample(ModelInput.from_ints([1, 2, 3]), num_samples=2).result()
    """

    def __init__(self, service: ServiceClient, sampling_session_id: str, base_model: str | None = None):
        self.service = service
        self.transport = service.transport
        self.sampling_session_id = sampling_session_id
        self._base_model = base_model
        self._seq = itertools.count()
        self._lock = threading.Lock()

    @classmethod
    def for_session(
        cls, service: ServiceClient, sampling_session_id: str, base_model: str | None = None
    ) -> SamplingClient:
        """A client of an existing sampler.

        Args:
            service: The ServiceClient whose connection it uses.
            sampling_session_id: The sampler's id on the server.
            base_model: The sampler's base model, if known (else `get_base_model` asks the server).

        Returns:
            A SamplingClient.

        Example:
            sampler = SamplingClient.for_session(service, "sess:sample:0")
        """
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
        """Sample completions of `prompt` (Tinker's signature).

        Options left at their defaults are not sent; the server refuses the options it does not
        implement (`prompt_alt_tokens_k`) with a BadRequestError naming them.

        Args:
            prompt: The prompt's tokens.
            num_samples: How many completions.
            sampling_params: max_tokens, temperature, top_k, top_p, stop, seed (the server's
                defaults if None).
            include_prompt_logprobs: Also score the prompt's tokens (`prompt_logprobs`).
            topk_prompt_logprobs: The k most likely tokens at each prompt position.
            topk_sample_logprobs: The k most likely tokens at each sampled position (each
                sequence's `topk_logprobs`); sent only when non-zero.
            target_prompt_logprobs: Token ids to score at each prompt position after the first
                (int64, shape [len(prompt) - 1, K], -1 where none): a list, array, tensor or
                TensorData; the response's `target_prompt_logprobs` holds their logprobs.
            prompt_alt_tokens_k: Sent only when non-zero.
            prompt_logprobs_last_n: Keep prompt logprobs for the last N positions only (the
                earlier ones are None).

        Returns:
            A future of the SampleResponse; each sequence carries the server's `sequence_id`.

        Example:
            params = SamplingParams(max_tokens=20, temperature=0.7)
            response = sampler.sample(ModelInput.from_ints(tokens), 4, params).result()
            texts = [tokenizer.decode(s.tokens) for s in response.sequences]
        """
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
            "target_prompt_logprobs": None
            if target_prompt_logprobs is None
            else to_tensor_data("target_prompt_logprobs", target_prompt_logprobs).model_dump(mode="json"),
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
        """The model's logprob of each prompt token given the tokens before it.

        Args:
            prompt: The tokens to score.
            prompt_logprobs_last_n: Score only the last N positions (the earlier ones are None).

        Returns:
            A future of one logprob per prompt token; the first is None (nothing precedes it).

        Example:
            logprobs = sampler.compute_logprobs(ModelInput.from_ints([4, 5, 6])).result()
        """
        future = self.sample(
            prompt,
            1,
            SamplingParams(max_tokens=1),
            include_prompt_logprobs=True,
            prompt_logprobs_last_n=prompt_logprobs_last_n,
        )
        return APIFuture(future.future(), _prompt_logprobs)

    async def sample_async(self, *args, **kwargs) -> SampleResponse:
        """Async `sample` (same arguments); returns the SampleResponse itself."""
        return await self.sample(*args, **kwargs)

    async def compute_logprobs_async(
        self, prompt: ModelInput, prompt_logprobs_last_n: int | None = None
    ) -> list[float | None]:
        """Async `compute_logprobs`; returns the logprobs themselves."""
        return await self.compute_logprobs(prompt, prompt_logprobs_last_n)

    def get_base_model(self) -> str:
        """The sampler's base model (asked of the server once, if not known).

        Returns:
            The base model's name.

        Example:
            print(sampler.get_base_model())
        """
        if self._base_model is None:
            info = background.run(self.transport.request("GET", f"samplers/{self.sampling_session_id}"))
            self._base_model = info["base_model"]
        return self._base_model

    def get_tokenizer(self) -> Any:
        """The base model's tokenizer (needs `transformers`), from the server's files or the hub.

        Returns:
            A `transformers` tokenizer.

        Example:
            tokens = sampler.get_tokenizer().encode("Hello")
        """
        return load_tokenizer(self.transport, self.get_base_model())

    async def get_tokenizer_async(self) -> Any:
        """Async `get_tokenizer`."""
        return await asyncio.to_thread(self.get_tokenizer)


def _prompt_logprobs(raw: dict) -> list[float | None]:
    # the server always answers prompt_logprobs when asked for them, as compute_logprobs does
    return cast("list[float | None]", SampleResponse.model_validate(raw).prompt_logprobs)
