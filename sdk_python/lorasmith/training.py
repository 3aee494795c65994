"""TrainingClient: one LoRA model on the server. Every method reserves its seq_id at call time and
returns a future at once; requests of the model are POSTed strictly in seq order."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
from typing import Any, Callable, Optional, Sequence

from ._internal import background
from .futures import APIFuture
from .types import (AdamParams, Datum, ForwardBackwardOutput, GetInfoResponse, OptimStepResponse, SaveWeightsResponse,
                    TensorData, reduce_metrics)

MAX_CHUNK_DATUMS = 1024
MAX_CHUNK_BYTES = 5_000_000  # well under the server's request body limit


class TrainingClient:
    def __init__(self, service, model_id: str, info: dict, next_seq: int = 1):
        self.service = service
        self.transport = service.transport
        self.model_id = model_id
        self._info = GetInfoResponse(**info)
        self._next_seq = next_seq
        self._first_seq = next_seq
        self._lock = threading.RLock()
        self._accepted: dict[int, asyncio.Event] = {}  # touched only on the background loop

    @classmethod
    async def connect(cls, service, model_id: str, next_seq: int = 1) -> "TrainingClient":
        info = await service.transport.request("POST", "get_info", {"model_id": model_id, "type": "get_info"})
        return cls(service, model_id, info, next_seq)

    # ---- ordering ---------------------------------------------------------------------------

    def _reserve(self, count: int = 1) -> list[int]:
        with self._lock:
            seqs = list(range(self._next_seq, self._next_seq + count))
            self._next_seq += count
            return seqs

    def _event(self, seq: int) -> asyncio.Event:
        return self._accepted.setdefault(seq, asyncio.Event())

    async def _post_in_order(self, seq: int, path: str, body: dict) -> dict:
        """POST once every lower seq of this model has been accepted by the server."""
        if seq > self._first_seq:
            await self._event(seq - 1).wait()
        try:
            return await self.transport.request("POST", path, {**body, "model_id": self.model_id, "seq_id": seq})
        finally:
            self._event(seq).set()
            self._accepted.pop(seq - 1, None)

    def _submit(self, path: str, body: dict, convert: Callable[[dict], Any]):
        """Returns (accepted, result): a concurrent future of the POST's answer, and the APIFuture."""
        (seq,) = self._reserve()
        accepted: concurrent.futures.Future = concurrent.futures.Future()

        async def go():
            try:
                handle = await self._post_in_order(seq, path, body)
            except BaseException as error:
                accepted.set_exception(error)
                raise
            accepted.set_result(handle)
            return await self.transport.wait_result(handle["request_id"])

        return accepted, APIFuture(background.submit(go()), convert)

    @staticmethod
    async def _accepted_then(accepted: concurrent.futures.Future, future: APIFuture) -> APIFuture:
        await asyncio.wrap_future(accepted)
        return future

    # ---- primitives -------------------------------------------------------------------------

    def forward_backward(self, data: Sequence[Datum], loss_fn: str = "cross_entropy",
                         loss_fn_config: Optional[dict] = None) -> APIFuture[ForwardBackwardOutput]:
        return self._forward(data, loss_fn, loss_fn_config, forward_only=False)[1]

    def forward(self, data: Sequence[Datum], loss_fn: str = "cross_entropy",
                loss_fn_config: Optional[dict] = None) -> APIFuture[ForwardBackwardOutput]:
        return self._forward(data, loss_fn, loss_fn_config, forward_only=True)[1]

    def _forward(self, data, loss_fn, loss_fn_config, forward_only: bool):
        chunks = _chunks([(d if isinstance(d, Datum) else Datum(**d)).model_dump(mode="json") for d in data])
        with self._lock:  # the chunks of one call get consecutive seq ids even with other threads calling
            parts = [self._submit("forward_backward", {
                "data": chunk, "loss_fn": loss_fn, "loss_fn_config": loss_fn_config, "forward_only": forward_only,
                "type": "forward_backward"}, _identity) for chunk in chunks]
        if len(parts) == 1:
            return parts[0][0], APIFuture(parts[0][1].future(), ForwardBackwardOutput.model_validate)

        async def combine():
            outputs = [await asyncio.wrap_future(p[1].future()) for p in parts]
            return {"loss_fn_output_type": "ArrayRecord",
                    "loss_fn_outputs": [o for out in outputs for o in out["loss_fn_outputs"]],
                    "metrics": reduce_metrics([o["metrics"] for o in outputs], [len(c) for c in chunks])}

        # accepted once the last chunk is: chunks are POSTed in seq order
        return parts[-1][0], APIFuture(background.submit(combine()), ForwardBackwardOutput.model_validate)

    def optim_step(self, adam_params: Optional[AdamParams] = None) -> APIFuture[OptimStepResponse]:
        return self._optim(adam_params)[1]

    def _optim(self, adam_params):
        params = (adam_params or AdamParams()).model_dump()
        return self._submit("optim_step", {"adam_params": params, "type": "optim_step"}, OptimStepResponse.model_validate)

    def save_state(self, name: str, ttl_seconds: Optional[int] = None) -> APIFuture[SaveWeightsResponse]:
        return self._submit("save_weights", {"path": name, "ttl_seconds": ttl_seconds, "type": "save_weights"},
                            SaveWeightsResponse.model_validate)[1]

    def load_state(self, path: str) -> APIFuture[dict]:
        return self._submit("load_weights", {"path": path, "optimizer": False, "type": "load_weights"}, _identity)[1]

    def load_state_with_optimizer(self, path: str) -> APIFuture[dict]:
        return self._submit("load_weights", {"path": path, "optimizer": True, "type": "load_weights"}, _identity)[1]

    def save_weights_for_sampler(self, name: str, ttl_seconds: Optional[int] = None) -> APIFuture[SaveWeightsResponse]:
        return self._submit("save_weights_for_sampler", {"path": name, "ttl_seconds": ttl_seconds, "kind": "snapshot",
                                                         "type": "save_weights_for_sampler"},
                            SaveWeightsResponse.model_validate)[1]

    def save_weights_external(self, name: str, ttl_seconds: Optional[int] = None) -> APIFuture[dict]:
        return self._submit("save_weights_external", {"path": name, "ttl_seconds": ttl_seconds,
                                                      "type": "save_weights_external"}, _identity)[1]

    def save_weights_and_get_sampling_client(self, name: Optional[str] = None):
        from .sampling import SamplingClient

        body = {"sampling_session_seq_id": self.service.next_sampler_seq(), "kind": "snapshot",
                "type": "save_weights_for_sampler"}
        future = self._submit("save_weights_for_sampler", body, _identity)[1]
        return SamplingClient.for_session(self.service, future.result()["sampling_session_id"],
                                          base_model=self._info.model_data.get("model_name"))

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn) -> APIFuture[ForwardBackwardOutput]:
        return self._custom(data, loss_fn)[1]

    def _custom(self, data, loss_fn):
        """DESIGN §4: forward, the user's torch loss on the logprobs, then a cross_entropy pass with
        weights = -dloss/dlogprobs, which gives the adapter exactly the custom loss's gradient."""
        import torch

        data = [d if isinstance(d, Datum) else Datum(**d) for d in data]
        first, second = self._reserve(2)
        accepted: concurrent.futures.Future = concurrent.futures.Future()

        def stripped(weights_of):
            return [{"model_input": d.model_input.model_dump(mode="json"),
                     "loss_fn_inputs": {"target_tokens": d.loss_fn_inputs["target_tokens"].model_dump(mode="json"),
                                        "weights": weights_of(i, d).model_dump(mode="json")}} for i, d in enumerate(data)]

        async def go():
            zeros = stripped(lambda i, d: TensorData.from_numpy(0 * d.loss_fn_inputs["target_tokens"].to_numpy()
                                                                .astype("float32")))
            try:
                handle = await self._post_in_order(first, "forward_backward", {
                    "data": zeros, "loss_fn": "cross_entropy", "forward_only": True})
            except BaseException as error:
                accepted.set_exception(error)
                raise
            accepted.set_result(handle)
            forward = await self.transport.wait_result(handle["request_id"])
            logprobs = [TensorData(**o["logprobs"]).to_torch().float().requires_grad_(True)
                        for o in forward["loss_fn_outputs"]]
            loss, metrics = loss_fn(data, logprobs)
            grads = torch.autograd.grad(loss, logprobs, allow_unused=True)
            weights = [(-g if g is not None else torch.zeros_like(lp)).detach() for g, lp in zip(grads, logprobs)]
            handle = await self._post_in_order(second, "forward_backward", {
                "data": stripped(lambda i, d: TensorData.from_torch(weights[i])), "loss_fn": "cross_entropy",
                "forward_only": False})
            backward = await self.transport.wait_result(handle["request_id"])
            merged = {**{k: float(v) for k, v in (metrics or {}).items()},
                      "loss:sum": float(loss.detach()), "surrogate_loss:sum": backward["metrics"]["loss:sum"]}
            return {**backward, "metrics": merged}

        return accepted, APIFuture(background.submit(go()), ForwardBackwardOutput.model_validate)

    # ---- async twins: the first await returns once the server accepted the request ----------

    async def forward_backward_async(self, data, loss_fn="cross_entropy", loss_fn_config=None) -> APIFuture:
        return await self._accepted_then(*self._forward(data, loss_fn, loss_fn_config, False))

    async def forward_async(self, data, loss_fn="cross_entropy", loss_fn_config=None) -> APIFuture:
        return await self._accepted_then(*self._forward(data, loss_fn, loss_fn_config, True))

    async def optim_step_async(self, adam_params: Optional[AdamParams] = None) -> APIFuture:
        return await self._accepted_then(*self._optim(adam_params))

    async def forward_backward_custom_async(self, data, loss_fn) -> APIFuture:
        return await self._accepted_then(*self._custom(data, loss_fn))

    async def save_state_async(self, name: str, ttl_seconds: Optional[int] = None) -> APIFuture:
        return self.save_state(name, ttl_seconds)

    async def save_weights_for_sampler_async(self, name: str) -> APIFuture:
        return self.save_weights_for_sampler(name)

    # ---- info ------------------------------------------------------------------------------

    def get_info(self) -> GetInfoResponse:
        return self._info

    def get_tokenizer(self):
        from .tokenizer import load_tokenizer

        return load_tokenizer(self.transport, self._info.model_data.get("tokenizer_id") or self._info.model_name)


def _chunks(data: list[dict]) -> list[list[dict]]:
    """Split a batch into requests of at most MAX_CHUNK_DATUMS datums and ~MAX_CHUNK_BYTES of JSON."""
    chunks: list[list[dict]] = [[]]
    size = 0
    for datum in data:
        datum_size = len(json.dumps(datum))
        if chunks[-1] and (len(chunks[-1]) >= MAX_CHUNK_DATUMS or size + datum_size > MAX_CHUNK_BYTES):
            chunks.append([])
            size = 0
        chunks[-1].append(datum)
        size += datum_size
    return chunks


def _identity(value: Any) -> Any:
    return value
