"""The engine: one frozen base model, many LoRA adapters, and `run_cycle` over their operations.

A cycle is a list of operations from many adapters. Operations of one adapter run in list order;
different adapters advance together in *waves*: each wave takes the next operation of every
adapter, runs all forward/forward_backward ones as ONE fused pass (packed rows, per-token adapter
routing, micro-batches under a token budget), all sample ones as ONE generation batch, and the rest
(optimizer steps, checkpoint I/O) one by one. This module schedules; the math lives in `packing`,
`logprobs`, `losses`, `sampler`, `lora_math` and `adapters`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import traceback
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import torch

from . import checkpoints, packing
from .adapter_store import AdapterStore
from .adapters import Adapter
from .base_model import (
    BaseModelInfo,
    default_data_dir,
    describe_base_model,
    load_base_model,
    pick_device,
    pick_dtype,
)
from .errors import EngineError, EngineInputError
from .logprobs import Head, chunk_tokens_for, target_logprobs
from .lora_layer import Backend, Routing, misfit, weight_kinds, wrap_model
from .lora_math import Segment
from .losses import op_loss
from .sampler import Decoder, PromptScoring, SampleRow, generate, row_stream
from .types import (
    CheckpointOutput,
    CreateAdapter,
    Datum,
    EngineOp,
    ExportPeft,
    ForwardBackward,
    ForwardBackwardOutput,
    ImportPeft,
    LoadState,
    LoraSpec,
    OpResult,
    OptimStep,
    OptimStepOutput,
    Sample,
    SampleOutput,
    SaveState,
)
from .validation import validate_forward_backward, validate_sample

log = logging.getLogger(__name__)


class Engine:
    def __init__(
        self,
        base_model: str,
        data_dir: Path | None = None,
        device: str | None = None,
        memory_budget_bytes: int | None = None,
        dtype: str | torch.dtype | None = None,
        max_pass_tokens: int | None = None,
        pack_row_tokens: int | None = None,
        lora_backend: Backend = "auto",
    ):
        """`dtype`: the base weights' (bf16 on CUDA, fp32 on CPU unless asked; adapter masters and
        Adam state are fp32 always). `max_pass_tokens`: the micro-batch budget of one forward
        (and backward) or one sampling batch (default per device). `pack_row_tokens`: the least
        length of a packed row; rows grow to the pass's longest sequence (see `packing`). Default:
        2,048 on CUDA, where padding costs GEMM work and a masked row's attention is a small share
        at real widths; 0 on CPU, where attention over long masked rows costs more than padding."""
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.info: BaseModelInfo = describe_base_model(base_model, self.data_dir)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.model, self.tokenizer = load_base_model(self.info, self.device, self.dtype)
        self.routing = Routing(lora_backend)
        self.layers = wrap_model(self.model, self.routing)
        self.body = self.model.base_model  # the decoder without its head: hidden states, not logits
        self.head = Head.of(self.model)
        self.chunk_tokens = chunk_tokens_for(self.info.vocab_size)
        self.max_pass_tokens = max_pass_tokens or default_pass_tokens(self.device, self.model.config, self.dtype)
        if pack_row_tokens is None:
            pack_row_tokens = 2048 if self.device.type == "cuda" else 0
        self.pack_row_tokens = pack_row_tokens
        self._spill = tempfile.TemporaryDirectory(prefix="lorasmith-spill-")
        self.adapters = AdapterStore(Path(self._spill.name), memory_budget_bytes)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.eos_ids = frozenset(_eos_ids(self.model, self.tokenizer))

    # ---- adapters -----------------------------------------------------------------------------

    def create_adapter(self, adapter_id: str, spec: LoraSpec) -> None:
        """`spec` checked itself when it was built, so nothing is left to refuse here."""
        self.adapters.put(Adapter.initialise(adapter_id, spec, self.layers, self.device))
        self.adapters.enforce_budget(pinned=[adapter_id])

    def remove_adapter(self, adapter_id: str) -> None:
        self.adapters.remove(adapter_id)

    def adapter_ids(self) -> list[str]:
        """Every adapter the engine holds, resident or spilled."""
        return self.adapters.ids()

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self.adapters

    def adapter(self, adapter_id: str) -> Adapter:
        return self.adapters.get(adapter_id, self.device)

    def memory_report(self) -> dict:
        return {
            "resident_adapters": self.adapters.resident_ids(),
            "resident_bytes": self.adapters.resident_bytes(),
            "adapters": len(self.adapters.ids()),
            "evictions": self.adapters.evictions,
            "budget_bytes": self.adapters.budget_bytes,
        }

    # ---- cycles -------------------------------------------------------------------------------

    def run_cycle(self, ops: Sequence[EngineOp]) -> list[OpResult]:
        results: list[OpResult | None] = [None] * len(ops)
        queues: OrderedDict[str, deque[int]] = OrderedDict()
        created: set[str] = set()  # adapters that an earlier op of this cycle loads into existence
        for index, op in enumerate(ops):
            try:
                self._validate(op, created)
            except EngineInputError as error:
                results[index] = OpResult(error=str(error), category="user")
                continue
            if isinstance(op, (LoadState, ImportPeft, CreateAdapter)):
                created.add(op.adapter_id)
            key = op.adapter_id if op.adapter_id is not None else f"\0base-{index}"
            queues.setdefault(key, deque()).append(index)
        while queues:
            heads = [queue.popleft() for queue in queues.values()]
            for key in [k for k, q in queues.items() if not q]:
                del queues[key]
            self._run_wave(ops, heads, results)
        return [
            r if r is not None else OpResult(error="operation was not executed", category="server") for r in results
        ]

    def _run_wave(self, ops: Sequence[EngineOp], heads: list[int], results: list) -> None:
        passes = {i: op for i in heads if isinstance(op := ops[i], ForwardBackward)}
        samples = {i: op for i in heads if isinstance(op := ops[i], Sample)}
        singles = [i for i in heads if i not in passes and i not in samples]
        if passes:
            self._fused_passes(passes, results)
        if samples:
            self._guarded(list(samples), results, lambda: self._sample(list(samples.values())))
        for i in singles:
            self._guarded([i], results, lambda i=i: [self._run_single(ops[i])])
        self.adapters.enforce_budget()  # between waves no adapter is in use, so any may go

    def _fused_passes(self, passes: dict[int, ForwardBackward], results: list) -> None:
        """One batched pass for these forward/backward ops (by cycle index). If it fails (e.g. one
        request's activations exhaust device memory), the ops whose adapters held no gradient before
        are run again one by one, their gradients reset first, so only the culprit fails. An adapter
        that was accumulating may hold a partial gradient now, so its op fails with the pass."""
        for i in [i for i, op in passes.items() if op.adapter_id not in self.adapters]:
            # gone since validation (an earlier op of the cycle that was to create it failed): this
            # op alone fails, the others' pass goes on
            results[i] = OpResult(error=f"unknown model {passes.pop(i).adapter_id!r}", category="user")
        if not passes:
            return
        fresh = {
            op.adapter_id
            for op in passes.values()
            if all(p.grad is None for p in self.adapter(op.adapter_id).parameters())
        }
        indices = list(passes)
        self._guarded(indices, results, lambda: self._forward_backward(list(passes.values())))
        if len(indices) == 1 or results[indices[0]].ok:
            return
        self._clear_grads(fresh)
        for i, op in passes.items():
            if op.adapter_id in fresh:
                self._guarded([i], results, lambda op=op: self._forward_backward([op]))
                if not results[i].ok:
                    self._clear_grads([op.adapter_id])  # the culprit leaves no gradient behind

    def _clear_grads(self, adapter_ids: Iterable[str]) -> None:
        for adapter_id in adapter_ids:
            for parameter in self.adapter(adapter_id).parameters():
                parameter.grad = None

    def _guarded(self, indices: list[int], results: list, work) -> None:
        """Run `work` for these ops; a failure fails exactly these ops and nothing else."""
        try:
            outputs = work()
        except EngineInputError as error:
            for i in indices:
                results[i] = OpResult(error=str(error), category="user")
            return
        except Exception as error:  # noqa: BLE001 - a cycle must survive any failure of one pass
            log.error("engine pass failed: %s\n%s", error, traceback.format_exc())
            for i in indices:
                results[i] = OpResult(error=f"{type(error).__name__}: {error}", category="server")
            return
        for i, output in zip(indices, outputs):
            results[i] = output if isinstance(output, OpResult) else OpResult(output=output)

    def _validate(self, op: EngineOp, created: set[str]) -> None:
        if isinstance(op, ForwardBackward):
            validate_forward_backward(self.info, op.data, op.loss_fn, op.loss_fn_config)
        elif isinstance(op, Sample):
            validate_sample(
                self.info,
                op.prompt,
                op.num_samples,
                op.params,
                op.topk_prompt_logprobs,
                op.target_prompt_tokens,
                op.topk_sample_logprobs,
            )
        # LoadState/ImportPeft/CreateAdapter create their adapter; a Sample without one runs on the
        # bare base model
        if isinstance(op, (LoadState, ImportPeft, CreateAdapter)) or op.adapter_id is None:
            return
        if op.adapter_id not in self.adapters and op.adapter_id not in created:
            raise EngineInputError(f"unknown model {op.adapter_id!r}", field="model_id")

    @contextlib.contextmanager
    def _routed(self, segments: list[Segment]) -> Iterator[None]:
        self.routing.segments = segments
        try:
            yield
        finally:
            self.routing.segments = []

    # ---- forward / forward_backward ----------------------------------------------------------

    def _forward_backward(self, ops: list[ForwardBackward]) -> list[ForwardBackwardOutput]:
        """One fused pass over every datum of these ops (one op per adapter), in micro-batches of at
        most `max_pass_tokens` tokens, each packed, run forward and backward at once; gradients
        accumulate across micro-batches, which is exact since every loss is a sum over datums."""
        adapters = [self.adapter(op.adapter_id) for op in ops]
        items = [(k, j) for k, op in enumerate(ops) for j in range(len(op.data))]  # (op, datum), grouped by op
        lengths = [len(ops[k].data[j].model_input) for k, j in items]
        logprobs: list[list[torch.Tensor]] = [[torch.empty(0)] * len(op.data) for op in ops]
        loss_sums = [0.0] * len(ops)
        for run in packing.micro_batches(lengths, self.max_pass_tokens):
            chosen = [items[i] for i in run]
            with torch.set_grad_enabled(any(not ops[k].forward_only for k, _ in chosen)):
                scored, op_losses = self._micro_batch(ops, adapters, chosen)
            for (k, j), lp in zip(chosen, scored):
                logprobs[k][j] = lp
            for k, value in op_losses.items():
                loss_sums[k] += value
        return [
            ForwardBackwardOutput([{"logprobs": lp} for lp in logprobs[k]], {"loss:sum": loss_sums[k]})
            for k in range(len(ops))
        ]

    def _micro_batch(
        self, ops: list[ForwardBackward], adapters: list[Adapter], chosen: list[tuple[int, int]]
    ) -> tuple[list[torch.Tensor], dict[int, float]]:
        """Forward (and backward, under grad) of these datums packed together. Returns each datum's
        target logprobs on the CPU, (N,) or (N, K), and each op's loss over them."""
        data = [ops[k].data[j] for k, j in chosen]
        owners = [adapters[k] for k, _ in chosen]
        targets = [d.loss_fn_inputs["target_tokens"] for d in data]
        width = max(t.shape[1] if t.dim() == 2 else 1 for t in targets)  # K: 1 when every target is (N,)
        packed = packing.pack(
            [d.model_input for d in data], owners, self.pack_row_tokens, self.pad_id, self.info.max_context
        )
        with self._routed(packed.segments):
            hidden = self.body(
                input_ids=packed.input_ids.to(self.device),
                position_ids=packed.position_ids.to(self.device),
                use_cache=False,  # with a cache, transformers lets packed sequences attend to each other
            ).last_hidden_state  # (R, W, H)
            index = packed.flat_index().to(self.device)  # (N_all,)
            real = hidden.reshape(-1, hidden.shape[-1]).index_select(0, index)  # (N_all, H)
            wanted = torch.zeros(index.shape[0], width, dtype=torch.long)  # (N_all, K)
            row = 0
            for t in targets:
                wanted[row : row + t.shape[0]] = t.reshape(t.shape[0], -1).long()  # (N, 1) broadcast, or (N, K)
                row += t.shape[0]
            head_segments = _segments_of(owners, [t.shape[0] for t in targets])
            gathered = target_logprobs(self.head, real, wanted.to(self.device), head_segments, self.chunk_tokens)
            per_datum = list(torch.split(gathered, [t.shape[0] for t in targets]))  # (N, K) each
            per_datum = [p[:, 0] if t.dim() == 1 else p[:, : t.shape[1]] for p, t in zip(per_datum, targets)]
            op_losses: dict[int, torch.Tensor] = {}
            for k in dict.fromkeys(k for k, _ in chosen):
                mine = [i for i, (owner, _) in enumerate(chosen) if owner == k]
                inputs = [
                    {
                        n: v.to(self.device, torch.float32)
                        for n, v in data[i].loss_fn_inputs.items()
                        if n != "target_tokens"
                    }
                    for i in mine
                ]
                op = ops[k]
                op_losses[k] = op_loss(op.loss_fn, op.loss_fn_config, [per_datum[i] for i in mine], inputs)
            trained = [loss for k, loss in op_losses.items() if not ops[k].forward_only]
            if trained and torch.is_grad_enabled():
                total = torch.stack(trained).sum()
                if total.requires_grad:
                    total.backward()
        return [p.detach().float().cpu() for p in per_datum], {k: float(v.detach()) for k, v in op_losses.items()}

    # ---- sampling -------------------------------------------------------------------------------

    def _sample(self, ops: list[Sample]) -> list[SampleOutput]:
        rows: list[SampleRow] = []
        owner: list[int] = []
        for op_index, op in enumerate(ops):
            adapter = self.adapter(op.adapter_id) if op.adapter_id is not None else None
            stop_ids, stop_strings = self._stops(op.params.stop)
            wants_scores = op.prompt_logprobs or op.topk_prompt_logprobs or op.target_prompt_tokens is not None
            for k in range(op.num_samples):
                scoring = None
                if k == 0 and wants_scores:  # the prompt is the same for every sample: score it once
                    scoring = PromptScoring(op.prompt_logprobs, op.topk_prompt_logprobs, op.target_prompt_tokens)
                rows.append(
                    SampleRow(
                        adapter,
                        list(op.prompt),
                        op.params,
                        row_stream(op.params.seed, k),
                        stop_ids,
                        stop_strings,
                        scoring,
                        op.topk_sample_logprobs,
                    )
                )
                owner.append(op_index)
        order = sorted(range(len(rows)), key=lambda i: (rows[i].adapter is not None, id(rows[i].adapter)))
        ordered = [rows[i] for i in order]
        decoder = Decoder(self.body, self.head, self.routing, self.chunk_tokens)
        try:
            cost = [len(r.prompt) + r.params.max_tokens for r in ordered]
            for run in packing.micro_batches(cost, self.max_pass_tokens):
                generate(decoder, ordered[run.start : run.stop], self._decode, self.pad_id, self.device)
        finally:
            self.routing.segments = []
        outputs = [SampleOutput(sequences=[]) for _ in ops]
        for row, op_index in zip(rows, owner):
            outputs[op_index].sequences.append(row.result())
            if row.scoring is not None:
                out, scoring = outputs[op_index], row.scoring
                if scoring.logprobs:
                    out.prompt_logprobs = [None, *(scoring.prompt_logprobs or [])]
                if scoring.topk:
                    out.topk_prompt_logprobs = [None, *(scoring.topk_prompt_logprobs or [])]
                if scoring.targets is not None:
                    out.target_prompt_logprobs = scoring.target_prompt_logprobs
        return outputs

    def _stops(self, stop) -> tuple[frozenset[int], tuple[str, ...]]:
        if stop is None:
            return self.eos_ids, ()
        if isinstance(stop, str):
            return self.eos_ids, (stop,)
        ints = [s for s in stop if isinstance(s, int)]
        strings = tuple(s for s in stop if isinstance(s, str))
        if strings:
            return frozenset(ints) | self.eos_ids, strings
        return frozenset(ints), ()

    def _decode(self, tokens: list[int]) -> str:
        return cast(str, self.tokenizer.decode(tokens, skip_special_tokens=False))  # one flat list: one string

    # ---- optimizer and checkpoints ----------------------------------------------------------------

    def _run_single(self, op: EngineOp) -> OptimStepOutput | CheckpointOutput | None:
        if isinstance(op, CreateAdapter):
            self.create_adapter(op.adapter_id, op.spec)
            return None
        if isinstance(op, OptimStep):
            return OptimStepOutput(self.adapter(op.adapter_id).optimizer_step(op.params))
        if isinstance(op, SaveState):
            checkpoints.save_state(self.adapter(op.adapter_id), op.directory, op.include_optimizer)
        elif isinstance(op, ExportPeft):
            checkpoints.export_peft(self.adapter(op.adapter_id), op.directory, self.info.model_dir)
        elif isinstance(op, LoadState):
            self._install(checkpoints.load_state(op.adapter_id, op.directory, self.device, op.include_optimizer))
        elif isinstance(op, ImportPeft):
            kinds = weight_kinds(self.layers)
            self._install(checkpoints.import_peft(op.adapter_id, op.directory, self.device, kinds))
        else:
            raise EngineError(f"unsupported operation {type(op).__name__}")
        return CheckpointOutput(Path(op.directory), checkpoints.directory_size(op.directory))

    def _install(self, adapter: Adapter) -> None:
        """A loaded adapter replaces any of the same id, once it is known to fit this base model."""
        self._check_shapes(adapter)
        self.adapters.put(adapter)

    def _check_shapes(self, adapter: Adapter) -> None:
        name = misfit(self.layers, adapter.weights)
        if name is not None:
            raise EngineInputError(f"checkpoint does not fit base model {self.info.name} (module {name})", field="path")


def default_pass_tokens(device: torch.device, config, dtype: torch.dtype) -> int:
    """Tokens one micro-batch may carry. On CUDA: 60% of the memory left after loading, over an
    estimate of what backward keeps per token (per layer ~12 hidden-sized and 4 MLP-sized
    activations, as a Llama block under SDPA keeps); the logprobs are chunked apart from this.
    On CPU a fixed 8k tokens."""
    if device.type != "cuda":
        return 8192
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(text.hidden_size)
    mlp = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    per_token = int(text.num_hidden_layers) * (12 * hidden + 4 * mlp) * torch.finfo(dtype).bits // 8
    free = torch.cuda.get_device_properties(device).total_memory - torch.cuda.memory_allocated(device)
    return max(1024, min(262144, int(0.6 * free) // per_token))


def _loss_inputs(datum: Datum, device: torch.device) -> dict[str, torch.Tensor]:
    return {n: v.to(device, torch.float32) for n, v in datum.loss_fn_inputs.items() if n != "target_tokens"}


def _segments_of(owners: list[Adapter], counts: list[int]) -> list[Segment]:
    """Segments over consecutive groups of `counts[i]` tokens owned by `owners[i]`."""
    segments: list[Segment] = []
    position = 0
    for owner, count in zip(owners, counts):
        if segments and segments[-1].adapter is owner:
            segments[-1].stop += count
        else:
            segments.append(Segment(owner, position, position + count))
        position += count
    return segments


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids
