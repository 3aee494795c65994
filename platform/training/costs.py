"""What an operation costs a cycle, in tokens, so dispatch can fill cycles under a token budget
(DESIGN §6, fair cycles). Computed once from the payload when the operation is stored (the
payload may be megabytes; dispatch reads only this number).

- forward / forward_backward: the tokens of every datum's model input;
- sample: (prompt + max_tokens) x num_samples, what the KV cache and the decode steps hold;
- everything else (create, optimizer step, save, load): 1, so it always fits beside others.
"""

from __future__ import annotations

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
