"""TrainingClient: one LoRA model on the server. Every method reserves its seq_id at call time and
returns a future at once; requests of the model are POSTed strictly in seq order."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from ._internal import background
from ._internal.transport import EventStreamLost
from .errors import APIError, LorasmithError
from .futures import APIFuture, ClientFutureCompat
from .types import (
    AdamParams,
    Datum,
    ForwardBackwardOutput,
    GetInfoResponse,
    OptimStepResponse,
    SaveWeightsResponse,
    TensorData,
    reduce_metrics,
)

MAX_CHUNK_DATUMS = 1024
MAX_CHUNK_BYTES = 4_000_000  # of JSON; under a 4 MiB request body limit
# fills a seq reserved but never sent (a custom loss that raised): one token, forward only, zero weight
NO_OP = {
    "data": [
        {
            "model_input": {"chunks": [{"type": "encoded_text", "tokens": [0]}]},
            "loss_fn_inputs": {
                "target_tokens": {"data": [0], "dtype": "int64", "shape": [1]},
                "weights": {"data": [0.0], "dtype": "float32", "shape": [1]},
            },
        }
    ],
    "loss_fn": "cross_entropy",
    "loss_fn_config": None,
    "forward_only": True,
    "type": "forward_backward",
}


class TrainingClient(ClientFutureCompat):
    def __init__(self, service, model_id: str, info: dict, next_seq: int = 1):
        self.service = service
        self.transport = service.transport
        self.model_id = model_id
        self._info = GetInfoResponse(**info)
        self._next_seq = next_seq
        self._first_seq = next_seq
        self._lock = threading.RLock()
        self._accepted: dict[int, asyncio.Event] = {}  # touched only on the background loop
        self._poisoned: str | None = None

    @classmethod
    async def connect(cls, service, model_id: str, next_seq: int = 1) -> TrainingClient:
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
        """POST once every lower seq of this model has been accepted by the server.

        The server runs a model's requests only without gaps. A request it refuses at the door
        still uses up its seq (the answer says `consumed_seq_id`), so later requests go on; any
        other failure leaves the seq's fate unknown, and the client is poisoned: every later
        request fails at once instead of waiting forever behind a gap."""
        if seq > self._first_seq:
            await self._event(seq - 1).wait()
        try:
            if self._poisoned is not None:
                raise LorasmithError(
                    f"request {seq} of {self.model_id} was not sent: an earlier request of this TrainingClient was "
                    f"not accepted ({self._poisoned}), and the server runs a model's requests only without gaps. "
                    "Continue with a new client (e.g. create_training_client_from_state of your last save_state)."
                )
            return await self._post(seq, path, body)
        except APIError as refused:
            if refused.consumed_seq_id != seq:
                self._poisoned = f"{type(refused).__name__}: {refused}"
            raise
        except BaseException as error:
            if self._poisoned is None:
                self._poisoned = f"{type(error).__name__}: {error}"
            raise
        finally:
            self._event(seq).set()
            self._accepted.pop(seq - 1, None)

    async def _post(self, seq: int, path: str, body: dict) -> dict:
        return await self.transport.request("POST", path, {**body, "model_id": self.model_id, "seq_id": seq})

    def _submit(self, path: str, body: dict, convert: Callable[[dict], Any]) -> APIFuture:
        (seq,) = self._reserve()
        accepted: concurrent.futures.Future = concurrent.futures.Future()

        async def go():
            handle = await _accept(accepted, self._post_in_order(seq, path, body))
            return await self.transport.wait_result(handle["request_id"])

        return APIFuture(background.submit(go()), convert, accepted=accepted)

    def _chunks(self, data: list[dict]) -> list[list[dict]]:
        """Split a batch into requests within the server's chunk limits (its client/config may set
        `fwdbwd_max_chunk_len` and `fwdbwd_max_chunk_bytes_count`, as Tinker's does)."""
        config = self.service.client_config
        max_datums = config.get("fwdbwd_max_chunk_len") or MAX_CHUNK_DATUMS
        max_bytes = config.get("fwdbwd_max_chunk_bytes_count") or MAX_CHUNK_BYTES
        chunks: list[list[dict]] = [[]]
        size = 0
        for datum in data:
            datum_size = len(json.dumps(datum))
            if chunks[-1] and (len(chunks[-1]) >= max_datums or size + datum_size > max_bytes):
                chunks.append([])
                size = 0
            chunks[-1].append(datum)
            size += datum_size
        return chunks

    # ---- primitives -------------------------------------------------------------------------

    def forward_backward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._forward(data, loss_fn, loss_fn_config, forward_only=False)

    def forward(
        self, data: Sequence[Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict | None = None
    ) -> APIFuture[ForwardBackwardOutput]:
        return self._forward(data, loss_fn, loss_fn_config, forward_only=True)

    def _forward(self, data, loss_fn, loss_fn_config, forward_only: bool) -> APIFuture[ForwardBackwardOutput]:
        chunks = self._chunks([(d if isinstance(d, Datum) else Datum(**d)).model_dump(mode="json") for d in data])
        with self._lock:  # the chunks of one call get consecutive seq ids even with other threads calling
            parts = [
                self._submit(
                    "forward_backward",
                    {
                        "data": chunk,
                        "loss_fn": loss_fn,
                        "loss_fn_config": loss_fn_config,
                        "forward_only": forward_only,
                        "type": "forward_backward",
                    },
                    _identity,
                )
                for chunk in chunks
            ]
        if len(parts) == 1:
            return APIFuture(parts[0].future(), ForwardBackwardOutput.model_validate, accepted=parts[0].accepted)

        async def combine():
            outputs = [await asyncio.wrap_future(p.future()) for p in parts]
            return {
                "loss_fn_output_type": "ArrayRecord",
                "loss_fn_outputs": [o for out in outputs for o in out["loss_fn_outputs"]],
                "metrics": reduce_metrics([o["metrics"] for o in outputs], [len(c) for c in chunks]),
            }

        # accepted once the last chunk is: chunks are POSTed in seq order
        return APIFuture(
            background.submit(combine()), ForwardBackwardOutput.model_validate, accepted=parts[-1].accepted
        )

    def optim_step(
        self, optim_params: AdamParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture[OptimStepResponse]:
        """Tinker's signature: the parameters positionally or as `adam_params=` (AdamW only)."""
        params = (optim_params or adam_params or AdamParams()).model_dump()
        return self._submit(
            "optim_step", {"adam_params": params, "type": "optim_step"}, OptimStepResponse.model_validate
        )

    def save_state(
        self, name: str, ttl_seconds: int | None = None, overwrite: bool = False, user_metadata: dict | None = None
    ) -> APIFuture[SaveWeightsResponse]:
        return self._submit(
            "save_weights",
            {
                "path": name,
                "ttl_seconds": ttl_seconds,
                "overwrite": overwrite,
                "user_metadata": user_metadata or {},
                "type": "save_weights",
            },
            SaveWeightsResponse.model_validate,
        )

    def load_state(self, path: str) -> APIFuture[dict]:
        return self._submit("load_weights", {"path": path, "optimizer": False, "type": "load_weights"}, _identity)

    def load_state_with_optimizer(self, path: str) -> APIFuture[dict]:
        return self._submit("load_weights", {"path": path, "optimizer": True, "type": "load_weights"}, _identity)

    def save_weights_for_sampler(
        self, name: str, ttl_seconds: int | None = None, user_metadata: dict | None = None
    ) -> APIFuture[SaveWeightsResponse]:
        return self._submit(
            "save_weights_for_sampler",
            {
                "path": name,
                "ttl_seconds": ttl_seconds,
                "kind": "snapshot",
                "user_metadata": user_metadata or {},
                "type": "save_weights_for_sampler",
            },
            SaveWeightsResponse.model_validate,
        )

    def save_weights_external(
        self, name: str, ttl_seconds: int | None = None, age_encryption_recipients: list[str] | None = None
    ) -> APIFuture[dict]:
        """PEFT weights for use outside the service (the server refuses encryption it cannot do)."""
        body = {"path": name, "ttl_seconds": ttl_seconds, "type": "save_weights_external"}
        if age_encryption_recipients:
            body["age_encryption_recipients"] = list(age_encryption_recipients)
        return self._submit("save_weights_external", body, _identity)

    def save_weights_and_get_sampling_client(
        self,
        name: str | None = None,
        retry_config: Any = None,
        record_stability_info: bool = False,
        kind: str = "snapshot",
    ):
        """An ephemeral sampler on the current weights. `name`, `retry_config`,
        `record_stability_info` and `kind` are accepted for Tinker compatibility (Tinker ignores
        `name` too; this SDK's retries are set on the ServiceClient)."""
        return self._ephemeral_sampler().result()

    def _ephemeral_sampler(self) -> APIFuture:
        from .sampling import SamplingClient

        body = {
            "sampling_session_seq_id": self.service.next_sampler_seq(),
            "kind": "snapshot",
            "type": "save_weights_for_sampler",
        }
        base_model = self._info.model_data.get("model_name")
        return self._submit(
            "save_weights_for_sampler",
            body,
            lambda answer: SamplingClient.for_session(
                self.service, answer["sampling_session_id"], base_model=base_model
            ),
        )

    def create_sampling_client(self, model_path: str, retry_config: Any = None, record_stability_info: bool = False):
        return self.service.create_sampling_client(model_path=model_path)

    def forward_backward_custom(self, data: Sequence[Datum], loss_fn) -> APIFuture[ForwardBackwardOutput]:
        """DESIGN §4 / TINKER_WIRE §8.5: a forward pass, the user's torch loss on the logprobs, then a
        cross_entropy pass with weights = -dloss/dlogprobs, which gives the adapter exactly the custom
        loss's gradient. `loss_fn(data, logprobs_list) -> (loss, metrics)`. Both passes use the same
        chunks; their 2 x chunks seq ids are reserved now."""
        import torch

        data = [d if isinstance(d, Datum) else Datum(**d) for d in data]

        def stripped(d: Datum, weights: TensorData) -> dict:
            return {
                "model_input": d.model_input.model_dump(mode="json"),
                "loss_fn_inputs": {
                    "target_tokens": d.loss_fn_inputs["target_tokens"].model_dump(mode="json"),
                    "weights": weights.model_dump(mode="json"),
                },
            }

        zeros = [
            stripped(d, TensorData.from_numpy(0 * d.loss_fn_inputs["target_tokens"].to_numpy().astype("float32")))
            for d in data
        ]
        chunks = self._chunks(zeros)
        seqs = self._reserve(2 * len(chunks))
        forward_seqs, backward_seqs = seqs[: len(chunks)], seqs[len(chunks) :]
        accepted: concurrent.futures.Future = concurrent.futures.Future()

        posted: set[int] = set()

        async def post_all(seq_ids, chunk_data, forward_only: bool) -> list[dict]:
            handles = []
            for seq, chunk in zip(seq_ids, chunk_data):
                posted.add(seq)
                handles.append(
                    await self._post_in_order(
                        seq,
                        "forward_backward",
                        {
                            "data": chunk,
                            "loss_fn": "cross_entropy",
                            "forward_only": forward_only,
                            "type": "forward_backward",
                        },
                    )
                )
            return handles

        async def results(handles: list[dict]) -> list[dict]:
            return [await self.transport.wait_result(h["request_id"]) for h in handles]

        async def go():
            try:
                handles = await _accept(accepted, post_all(forward_seqs, chunks, True))
                outputs = [o for out in await results(handles) for o in out["loss_fn_outputs"]]
                logprobs = [TensorData(**o["logprobs"]).to_torch().float().requires_grad_(True) for o in outputs]
                loss, metrics = loss_fn(data, logprobs)
                grads = torch.autograd.grad(loss, logprobs, allow_unused=True)
            except BaseException:
                for seq in seqs:  # no-ops fill the reserved seqs not sent: the model's later requests still run
                    if seq not in posted:
                        with contextlib.suppress(LorasmithError):  # if it fails, the client is poisoned
                            await self._post_in_order(seq, "forward_backward", NO_OP)
                raise
            weighted = iter(
                [
                    stripped(d, TensorData.from_torch(-g if g is not None else torch.zeros_like(lp)))
                    for d, g, lp in zip(data, grads, logprobs)
                ]
            )
            backward = await results(
                await post_all(backward_seqs, [[next(weighted) for _ in c] for c in chunks], False)
            )
            server = reduce_metrics([b["metrics"] for b in backward], [len(c) for c in chunks])
            merged = {
                **{k: float(v) for k, v in (metrics or {}).items()},
                "loss:sum": float(loss.detach()),
                "surrogate_loss:sum": server.pop("loss:sum"),
            }
            return {
                "loss_fn_output_type": "ArrayRecord",
                "loss_fn_outputs": [o for b in backward for o in b["loss_fn_outputs"]],
                "metrics": merged,
            }

        return APIFuture(background.submit(go()), ForwardBackwardOutput.model_validate, accepted=accepted)

    # ---- async twins: the first await returns once the server accepted the request, so a ------
    # ---- request made after it is ordered after it; `await` the returned future for the result --

    async def forward_backward_async(self, data, loss_fn="cross_entropy", loss_fn_config=None) -> APIFuture:
        return await self.forward_backward(data, loss_fn, loss_fn_config).submitted()

    async def forward_async(self, data, loss_fn="cross_entropy", loss_fn_config=None) -> APIFuture:
        return await self.forward(data, loss_fn, loss_fn_config).submitted()

    async def forward_backward_custom_async(self, data, loss_fn) -> APIFuture:
        return await self.forward_backward_custom(data, loss_fn).submitted()

    async def optim_step_async(
        self, optim_params: AdamParams | None = None, *, adam_params: AdamParams | None = None
    ) -> APIFuture:
        return await self.optim_step(optim_params, adam_params=adam_params).submitted()

    async def save_state_async(self, name: str, ttl_seconds: int | None = None, **options) -> APIFuture:
        return await self.save_state(name, ttl_seconds, **options).submitted()

    async def load_state_async(self, path: str) -> APIFuture:
        return await self.load_state(path).submitted()

    async def load_state_with_optimizer_async(self, path: str) -> APIFuture:
        return await self.load_state_with_optimizer(path).submitted()

    async def save_weights_for_sampler_async(self, name: str, ttl_seconds: int | None = None, **options) -> APIFuture:
        return await self.save_weights_for_sampler(name, ttl_seconds, **options).submitted()

    async def save_weights_external_async(self, name: str, ttl_seconds: int | None = None, **options) -> APIFuture:
        return await self.save_weights_external(name, ttl_seconds, **options).submitted()

    async def save_weights_and_get_sampling_client_async(self, name: str | None = None, **options):
        return await self._ephemeral_sampler()

    # ---- live metrics --------------------------------------------------------------------------

    async def subscribe_metrics(self) -> AsyncIterator[dict]:
        """The model's metrics as the server records them, pushed over the WebSocket. Subscribed
        when this returns, so steps submitted afterwards are all seen:
        `points = await training.subscribe_metrics(); async for p in points: print(p["step"], p["metrics"])`.
        The stream ends when the connection drops."""
        if self.transport.events is None:
            raise LorasmithError("subscribe_metrics needs the WebSocket; this ServiceClient has use_websocket=False")
        try:
            queue = await asyncio.wrap_future(background.submit(self.transport.events.subscribe_run(self.model_id)))
        except EventStreamLost:
            raise LorasmithError(f"cannot stream metrics: no WebSocket to {self.transport.base_url}") from None

        async def points():
            while (point := await asyncio.wrap_future(background.submit(queue.get()))) is not None:
                yield point

        return points()

    # ---- info ------------------------------------------------------------------------------

    def get_info(self) -> GetInfoResponse:
        return self._info

    async def get_info_async(self) -> GetInfoResponse:
        return self._info

    def get_tokenizer(self):
        from .tokenizer import load_tokenizer

        return load_tokenizer(self.transport, self._info.model_data.get("tokenizer_id") or self._info.model_name)

    async def get_tokenizer_async(self):
        return await asyncio.to_thread(self.get_tokenizer)


async def _accept(accepted: concurrent.futures.Future, post) -> dict:
    """Await the POST, recording its outcome in `accepted` (what the first await of `*_async` waits for)."""
    try:
        handle = await post
    except BaseException as error:
        accepted.set_exception(error)
        raise
    accepted.set_result(handle)
    return handle


def _identity(value: Any) -> Any:
    return value
