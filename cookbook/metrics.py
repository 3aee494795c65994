"""Where a recipe's metrics go: a tqdm bar on the console, `metrics.jsonl` in the log directory,
and the run's chart on the dashboard (`TrainingClient.log_metrics`).

The server records its own metrics of every step (`loss:sum`, the optimizer's, all named
`name:reduction`), so only the recipe's own numbers (held-out NLL, rewards, accuracy) are posted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

import lorasmith

POSTFIX_KEYS = 3  # metrics shown on the bar (the recipe's own, not the server's `name:reduction` ones)


# what the server charts itself for every step (`learning_rate:mean` with the optimizer's metrics):
# posting the loop's copy too would draw the same quantity twice, one step apart
SERVER_CHARTED = frozenset({"learning_rate"})


def _number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/Infinity
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class MetricsLogger:
    """Appends one JSON line per logged step and advances the progress bar.

    Args:
        log_dir: Where `metrics.jsonl` goes.
        total_steps: The bar's length.
        description: The bar's label (e.g. the recipe's stage).
        start_step: Where a resumed run starts on the bar.
        append: Add to an existing metrics file (a resumed run, a later stage) instead of starting it anew.
        show_progress: False hides the bar (the file is written either way).
        run: The training run to chart the metrics on; None keeps them local.
    """

    def __init__(
        self,
        log_dir: Path,
        total_steps: int,
        description: str,
        start_step: int = 0,
        append: bool = False,
        show_progress: bool = True,
        run: lorasmith.TrainingClient | None = None,
    ):
        self.path = log_dir / "metrics.jsonl"
        self.description = description
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._bar = tqdm(total=total_steps, initial=start_step, desc=description, disable=not show_progress)
        self.latest: dict[str, Any] = {}
        self._run = run
        self._posted: list[lorasmith.APIFuture[dict]] = []  # not awaited per step: the loop never waits on them

    def log(self, step: int, metrics: dict[str, Any], advance: bool = True) -> None:
        """Record `metrics` of `step`; `advance=False` logs without moving the bar (evaluations)."""
        record = {"stage": self.description, "step": step, **{k: _number(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.latest.update(metrics)
        own = {k: float(v) for k, v in metrics.items() if ":" not in k and k not in SERVER_CHARTED and _finite(v)}
        if self._run is not None and own:
            self._posted.append(self._run.log_metrics(own, step))
        shown = {k: f"{v:.4g}" for k, v in list(own.items())[:POSTFIX_KEYS]}
        self._bar.set_postfix(shown, refresh=False)
        if advance:
            self._bar.update(1)

    def close(self) -> None:
        """Close the bar and the file, then wait for the posted metrics (raising if one was refused)."""
        self._bar.close()
        self._file.close()
        for posted in self._posted:
            posted.result()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
