"""What an operation costs, from its payload (and result) alone, no database: so the model layer
can count it as the operation is stored and as it ends without importing the usage reports.

`tokens`: what it costs a cycle, so dispatch can fill cycles under a token budget (DESIGN §6, fair
cycles). Computed once from the payload when the operation is stored (the payload may be
megabytes; dispatch reads only this number).

- forward / forward_backward: the tokens of every datum's model input;
- sample: (prompt + max_tokens) x num_samples, what the KV cache and the decode steps hold;
- everything else (create, optimizer step, save, load): 1, so it always fits beside others.

`consumed`: what a finished operation used, for its usage record:

- `forward_backward`: the tokens of every datum's `model_input` are `tokens_trained`, or
  `tokens_forward` for a forward-only pass;
- `sample`: the tokens generated, over all returned sequences, are `tokens_sampled`;
- `optim_step`: one optimizer step.

Other operations (creating a model, saves, loads) consume no tokens and leave no record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

DEFAULT_MAX_TOKENS = 16  # gpu_runner.types.SamplingParams.max_tokens; this module imports no engine


def tokens(kind: str, payload: dict[str, Any]) -> int:
    """The operation's cost in tokens (at least 1). Never raises: a payload this cannot read
    (a rejected request's, say) costs 1."""
    try:
        if isinstance(payload.get("data"), list):  # forward, forward_backward
            return max(1, sum(_datum_tokens(d) for d in payload.get("data") or ()))
        if kind == "sample":
            samples = int(payload.get("num_samples") or 1)
            max_tokens = (payload.get("sampling_params") or {}).get("max_tokens")
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                max_tokens = DEFAULT_MAX_TOKENS
            return max(1, (len(payload.get("prompt") or ()) + max_tokens) * samples)
    except (TypeError, ValueError, AttributeError):
        return 1
    return 1


def _datum_tokens(datum: dict[str, Any]) -> int:
    chunks = (datum.get("model_input") or {}).get("chunks") or ()
    return sum(len(chunk.get("tokens") or ()) for chunk in chunks)


@dataclass(frozen=True)
class Counts:
    tokens_trained: int = 0
    tokens_forward: int = 0
    tokens_sampled: int = 0
    optimizer_steps: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


COUNTS = tuple(field.name for field in fields(Counts))  # the names usage sums and charts, in order


def consumed(kind: str, payload: dict[str, Any], result: dict) -> Counts:
    """What an operation of `kind` with `payload` consumed, given the result it finished with."""
    if kind == "forward_backward":
        tokens = sum(_datum_tokens(datum) for datum in payload["data"])
        return Counts(tokens_forward=tokens) if payload.get("forward_only") else Counts(tokens_trained=tokens)
    if kind == "optim_step":
        return Counts(optimizer_steps=1)
    if kind == "sample":
        return Counts(tokens_sampled=sum(len(sequence["tokens"]) for sequence in result["sequences"]))
    return Counts()
