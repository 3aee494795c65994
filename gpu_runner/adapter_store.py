"""The resident adapters of one engine, in LRU order under a memory budget: past it the coldest go
to a spill directory (weights, AdamW state and pending gradients) and come back on their next use.
"""

from __future__ import annotations

import secrets
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch

from .adapters import Adapter
from .checkpoints import read_spill, write_spill
from .errors import UnknownAdapterError


class AdapterStore:
    """`get` brings a spilled adapter back transparently; `enforce_budget` never evicts one named in
    `pinned`. With `budget_bytes=None` nothing is ever spilled."""

    def __init__(self, spill_dir: Path, budget_bytes: int | None = None):
        self.spill_dir = spill_dir
        self.budget_bytes = budget_bytes
        self._resident: OrderedDict[str, Adapter] = OrderedDict()
        self._spilled: dict[str, Path] = {}
        self.evictions = 0

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._resident or adapter_id in self._spilled

    def ids(self) -> list[str]:
        return list(self._resident) + list(self._spilled)

    def resident_ids(self) -> list[str]:
        return list(self._resident)

    def resident_bytes(self) -> int:
        return sum(a.nbytes() for a in self._resident.values())

    def put(self, adapter: Adapter) -> None:
        self.remove(adapter.adapter_id)
        self._resident[adapter.adapter_id] = adapter

    def remove(self, adapter_id: str) -> None:
        self._resident.pop(adapter_id, None)
        spilled = self._spilled.pop(adapter_id, None)
        if spilled is not None:
            shutil.rmtree(spilled, ignore_errors=True)

    def get(self, adapter_id: str, device: torch.device) -> Adapter:
        if adapter_id in self._resident:
            self._resident.move_to_end(adapter_id)
            return self._resident[adapter_id]
        if adapter_id not in self._spilled:
            raise UnknownAdapterError(f"unknown model {adapter_id!r}", field="model_id")
        path = self._spilled.pop(adapter_id)
        adapter = read_spill(adapter_id, path, device)
        shutil.rmtree(path, ignore_errors=True)
        self._resident[adapter_id] = adapter
        return adapter

    def enforce_budget(self, pinned: Iterable[str] = ()) -> None:
        if self.budget_bytes is None:
            return
        keep = set(pinned)
        for adapter_id in list(self._resident):
            if self.resident_bytes() <= self.budget_bytes:
                break
            if adapter_id in keep:
                continue
            adapter = self._resident.pop(adapter_id)
            path = self.spill_dir / _safe_name(adapter_id)
            write_spill(adapter, path)
            self._spilled[adapter_id] = path
            self.evictions += 1


def _safe_name(adapter_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in adapter_id) + "-" + secrets.token_hex(4)
