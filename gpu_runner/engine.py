"""The engine: one frozen base model, many LoRA adapters, and `run_cycle` over their operations.

A cycle is a list of operations from many adapters. Operations of one adapter run in list order;
different adapters advance together in *waves*: each wave takes the next operation of every
adapter, runs all forward/forward_backward ones as ONE padded batch with per-row adapter routing,
all sample ones as ONE generation batch, and the rest (optimizer steps, checkpoint I/O) one by one.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import cast

import torch

from . import checkpoints
from .adapter_store import AdapterStore
from .adapters import Adapter
from .base_model import BaseModelInfo, default_data_dir, describe_base_model, load_base_model, pick_device
from .errors import EngineError, EngineInputError
from .lora_layer import Routing, Segment, wrap_model
from .losses import LOSSES
from .sampler import SampleRow, generate, row_generator
from .types import (
    CheckpointOutput,
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
    ):
        self.data_dir = Path(data_dir) if data_dir else default_data_dir()
        self.info: BaseModelInfo = describe_base_model(base_model, self.data_dir)
        self.device = pick_device(device)
        self.model, self.tokenizer = load_base_model(self.info, self.device)
        self.routing = Routing()
        self.layers = wrap_model(self.model, self.routing)
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
            if isinstance(op, (LoadState, ImportPeft)):
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
                self.info, op.prompt, op.num_samples, op.params, op.topk_prompt_logprobs, op.target_prompt_tokens
            )
        # LoadState/ImportPeft create their adapter; a Sample without one runs on the bare base model
        if isinstance(op, (LoadState, ImportPeft)) or op.adapter_id is None:
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
        rows: list[list[int]] = []
        segments: list[Segment] = []
        for op in ops:
            adapter = self.adapter(op.adapter_id)
            segments.append(Segment(adapter, len(rows), len(rows) + len(op.data)))
            rows.extend(d.model_input for d in op.data)
        needs_grad = any(not op.forward_only for op in ops)
        data = [datum for op in ops for datum in op.data]
        with torch.set_grad_enabled(needs_grad), self._routed(segments):
            target_logprobs = self._target_logprobs(rows, data)
        total = None
        outputs = []
        row = 0
        for op in ops:
            spec = LOSSES[op.loss_fn]
            config = spec.config(op.loss_fn_config)
            op_loss = torch.zeros((), device=self.device)
            per_datum = []
            for datum in op.data:
                target_lp = target_logprobs[row]
                inputs = {
                    k: v.to(self.device, torch.float32) for k, v in datum.loss_fn_inputs.items() if k != "target_tokens"
                }
                op_loss = op_loss + spec.fn(target_lp, inputs, config)
                per_datum.append({"logprobs": target_lp.detach().float().cpu()})
                row += 1
            outputs.append(ForwardBackwardOutput(per_datum, {"loss:sum": float(op_loss.detach())}))
            if not op.forward_only:
                total = op_loss if total is None else total + op_loss
        if total is not None and total.requires_grad:
            total.backward()
        return outputs

    def _target_logprobs(self, rows: list[list[int]], data: list[Datum]) -> list[torch.Tensor]:
        """Logprob of each datum's targets, (N,) or (N, K), gathered in ONE op over the batch:
        slicing the (B, T, V) logprobs per datum would zero-fill a full-size gradient each time."""
        logprobs = self._token_logprobs(rows)  # (B, T, V)
        targets = [d.loss_fn_inputs["target_tokens"] for d in data]
        width = max(t.shape[1] if t.dim() == 2 else 1 for t in targets)  # K: 1 when every target is (N,)
        index = torch.zeros(logprobs.shape[0], logprobs.shape[1], width, dtype=torch.long)  # (B, T, K)
        for i, t in enumerate(targets):
            index[i, : t.shape[0]] = t.reshape(t.shape[0], -1).long()  # (N, 1) broadcast over K, or (N, K)
        gathered = logprobs.gather(-1, index.to(self.device))  # (B, T, K)
        return [
            gathered[i, : t.shape[0], 0] if t.dim() == 1 else gathered[i, : t.shape[0], : t.shape[1]]  # (N,) or (N, K)
            for i, t in enumerate(targets)
        ]

    def _token_logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """Right-padded batch; causal attention means padding never reaches real positions."""
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        logits = self.model(input_ids=ids.to(self.device), use_cache=False).logits  # (B, T, V)
        return torch.log_softmax(logits.float(), dim=-1)  # (B, T, V), fp32 even when the model is bf16

    # ---- sampling -------------------------------------------------------------------------------

    def _sample(self, ops: list[Sample]) -> list[SampleOutput]:
        rows: list[SampleRow] = []
        owner: list[int] = []
        for op_index, op in enumerate(ops):
            adapter = self.adapter(op.adapter_id) if op.adapter_id is not None else None
            stop_ids, stop_strings = self._stops(op.params.stop)
            for k in range(op.num_samples):
                rows.append(
                    SampleRow(
                        adapter, list(op.prompt), op.params, row_generator(op.params.seed, k), stop_ids, stop_strings
                    )
                )
                owner.append(op_index)
        order = sorted(range(len(rows)), key=lambda i: (rows[i].adapter is not None, id(rows[i].adapter)))
        ordered = [rows[i] for i in order]
        with self._routed(self._sample_segments(ordered)):
            generate(self.model, ordered, self._decode, self.pad_id, self.device)
        outputs = [SampleOutput(sequences=[]) for _ in ops]
        for row, op_index in zip(rows, owner):
            outputs[op_index].sequences.append(row.result())
        wanting = [
            i
            for i, op in enumerate(ops)
            if op.prompt_logprobs or op.topk_prompt_logprobs or op.target_prompt_tokens is not None
        ]
        if wanting:
            self._fill_prompt_logprobs([ops[i] for i in wanting], [outputs[i] for i in wanting])
        return outputs

    @staticmethod
    def _sample_segments(rows: list[SampleRow]) -> list[Segment]:
        segments: list[Segment] = []
        for i, row in enumerate(rows):
            if segments and segments[-1].adapter is row.adapter:
                segments[-1].stop = i + 1
            else:
                segments.append(Segment(row.adapter, i, i + 1))
        return segments

    def _fill_prompt_logprobs(self, ops: list[Sample], outputs: list[SampleOutput]) -> None:
        """Prompt scoring is a plain forward pass, so it equals `forward`/`compute_logprobs` exactly."""
        segments = [
            Segment(self.adapter(op.adapter_id) if op.adapter_id else None, i, i + 1) for i, op in enumerate(ops)
        ]
        with torch.no_grad(), self._routed(segments):
            logprobs = self._token_logprobs([op.prompt for op in ops])
        for i, (op, output) in enumerate(zip(ops, outputs)):
            n = len(op.prompt)
            lp = logprobs[i, : n - 1]  # (n-1, V): position t predicts prompt token t+1
            if op.prompt_logprobs:
                targets = torch.tensor(op.prompt[1:], device=self.device)  # (n-1,)
                scored = lp.gather(-1, targets[:, None]).squeeze(-1).cpu().tolist() if n > 1 else []  # (n-1,)
                output.prompt_logprobs = [None] + scored
            if op.topk_prompt_logprobs:
                values, tokens = torch.topk(lp, min(op.topk_prompt_logprobs, lp.shape[-1]), dim=-1)  # (n-1, k) each
                output.topk_prompt_logprobs = [None] + [
                    list(zip(t.tolist(), v.tolist())) for t, v in zip(tokens.cpu(), values.cpu())
                ]
            if op.target_prompt_tokens is not None and n > 1:
                asked = torch.tensor(op.target_prompt_tokens, dtype=torch.long, device=self.device)  # (n-1, K)
                target_scores = lp.gather(-1, asked.clamp(min=0))  # (n-1, K)
                output.target_prompt_logprobs = torch.where(asked >= 0, target_scores, 0.0).cpu().tolist()
            elif op.target_prompt_tokens is not None:
                output.target_prompt_logprobs = []

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

    def _run_single(self, op: EngineOp) -> OptimStepOutput | CheckpointOutput:
        if isinstance(op, OptimStep):
            return self._optim_step(op)
        if isinstance(op, SaveState):
            checkpoints.save_state(self.adapter(op.adapter_id), op.directory, op.include_optimizer)
        elif isinstance(op, ExportPeft):
            checkpoints.export_peft(self.adapter(op.adapter_id), op.directory, self.info.model_dir)
        elif isinstance(op, LoadState):
            self._install(checkpoints.load_state(op.adapter_id, op.directory, self.device, op.include_optimizer))
        elif isinstance(op, ImportPeft):
            kinds = {name: layer.kind for name, layer in self.layers.items()}
            self._install(checkpoints.import_peft(op.adapter_id, op.directory, self.device, kinds))
        else:
            raise EngineError(f"unsupported operation {type(op).__name__}")
        return CheckpointOutput(Path(op.directory), checkpoints.directory_size(op.directory))

    def _install(self, adapter: Adapter) -> None:
        """A loaded adapter replaces any of the same id, once it is known to fit this base model."""
        self._check_shapes(adapter)
        self.adapters.put(adapter)

    def _check_shapes(self, adapter: Adapter) -> None:
        for name, (lora_a, lora_b) in adapter.weights.items():
            layer = self.layers.get(name)
            if layer is None or lora_a.shape[1] != layer.base.in_features or lora_b.shape[0] != layer.base.out_features:
                raise EngineInputError(
                    f"checkpoint does not fit base model {self.info.name} (module {name})", field="path"
                )

    def _optim_step(self, op: OptimStep) -> OptimStepOutput:
        adapter = self.adapter(op.adapter_id)
        params = adapter.parameters()
        p = op.params
        grads = [q.grad for q in params if q.grad is not None]
        total_norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
        if p.grad_clip_norm > 0 and grads:
            torch.nn.utils.clip_grads_with_norm_(params, p.grad_clip_norm, total_norm, foreach=True)
        grad_norm = float(total_norm)
        for group in adapter.optimizer.param_groups:
            group.update(lr=p.learning_rate, betas=(p.beta1, p.beta2), eps=p.eps, weight_decay=p.weight_decay)
        started = time.perf_counter()
        adapter.optimizer.step()
        adapter.optimizer.zero_grad(set_to_none=True)
        return OptimStepOutput(
            {
                "grad_norm:mean": grad_norm,
                "learning_rate:mean": p.learning_rate,
                "optim_seconds:sum": time.perf_counter() - started,
            }
        )


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    return ids
