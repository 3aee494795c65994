"""The sampling playground's way to the domain: text through the base model's tokenizer, then the
same intake actions the API calls (a session, a sampler on the checkpoint, a sample request), so
the playground checks and queues exactly what `/api/v1/asample` would. Decodes results back to
text, token by token, for display (whitespace made visible where a token is only whitespace).

One dashboard session per browser login (kept in the Django session, heartbeated on each use, a
new one once it finished), and one sampler per checkpoint in it.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from training import base_models
from training.errors import Gone, NotFound
from training.intake import sampling_requests, sessions
from training.models import Checkpoint, Operation

SESSION_KEY = "playground"  # in request.session: {"session_id": ..., "samplers": {tinker_path: sampler_id}}


@lru_cache(maxsize=8)
def _tokenizer_at(model_dir: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


def tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    """The base model's own tokenizer, from the files the server holds (loaded once per process)."""
    info = base_models.info(base_model)
    if not Path(info.model_dir).is_dir():  # a hub id: its tokenizer comes from the hub cache
        return _tokenizer_at(info.model_dir)
    return _tokenizer_at(str(Path(info.model_dir).resolve()))


def submit(user, django_session, checkpoint: Checkpoint, prompt: str, params: dict) -> Operation:
    """Queue a sample of `checkpoint` on `prompt`; `params` are num_samples and the sampling params.
    Raises the intake's ApiError (a message naming the field) when the request is refused."""
    base_model = checkpoint.training_run.base_model
    tokens = tokenizer(base_model).encode(prompt, add_special_tokens=True)
    sampler_id = _sampler(user, django_session, checkpoint)
    body = {
        "sampling_session_id": sampler_id,
        "seq_id": secrets.randbits(62),  # samples never wait for a seq gap: any unused seq will do
        "prompt": {"chunks": [{"type": "encoded_text", "tokens": tokens}]},
        "num_samples": params.pop("num_samples"),
        "sampling_params": params,
    }
    return sampling_requests.submit_sample(user, body)


def _sampler(user, django_session, checkpoint: Checkpoint) -> str:
    state = django_session.get(SESSION_KEY) or {}
    try:
        sessions.heartbeat(user, state["session_id"])
    except (KeyError, NotFound, Gone):
        session = sessions.create_session(user, {"display_name": "Dashboard playground"})
        state = {"session_id": session.id, "samplers": {}}
    samplers = state["samplers"]
    if checkpoint.tinker_path not in samplers:
        sampler = sampling_requests.create_sampling_session(
            user,
            {
                "session_id": state["session_id"],
                "sampling_session_seq_id": len(samplers),
                "model_path": checkpoint.tinker_path,
            },
        )
        samplers[checkpoint.tinker_path] = sampler.id
    django_session[SESSION_KEY] = state
    return samplers[checkpoint.tinker_path]


@dataclass(frozen=True)
class Piece:
    """One sampled token as shown: its text, id and logprob (None where the runner gave none)."""

    text: str
    token: int
    logprob: float | None

    @property
    def probability(self) -> float | None:
        return math.exp(self.logprob) if self.logprob is not None else None

    @property
    def visible(self) -> str:
        """The text with newline, tab and space shown as ↵ → · (for the token table's cells)."""
        return self.text.translate(VISIBLE)

    @property
    def inline(self) -> str:
        """The text as the inline output shows it: ↵ before each newline and → before each tab, so
        a newline token is not an empty box (the newline still breaks the line)."""
        return self.text.replace("\n", "↵\n").replace("\t", "→\t")


VISIBLE = str.maketrans({"\n": "↵", "\t": "→", " ": "·", "\r": "␍"})


def decoded(op: Operation) -> tuple[str, list[dict]]:
    """A sample request's prompt as text, and each returned sequence as {pieces, text, stop_reason}."""
    words = tokenizer(op.base_model)
    prompt = without_added_bos(words, text_of(words, op.payload["prompt"]))  # as typed, special tokens too
    sequences = []
    for sequence in (op.result or {}).get("sequences", []):
        logprobs = sequence.get("logprobs") or [None] * len(sequence["tokens"])
        pieces = [Piece(text_of(words, [t]), t, lp) for t, lp in zip(sequence["tokens"], logprobs, strict=True)]
        sequences.append(
            {
                "pieces": pieces,
                "text": text_of(words, sequence["tokens"], skip_special_tokens=True),
                "stop_reason": sequence.get("stop_reason", ""),
            }
        )
    return prompt, sequences


def without_added_bos(words: PreTrainedTokenizerBase, text: str) -> str:
    """`text` less a leading BOS that the tokenizer adds by itself (`submit` encodes with the
    tokenizer's special tokens), so that it is not typed, or shown as typed, twice."""
    bos = words.bos_token
    adds_bos = isinstance(bos, str) and words.bos_token_id in words.encode("x", add_special_tokens=True)
    return text.removeprefix(bos) if adds_bos else text


def text_of(words: PreTrainedTokenizerBase, tokens: list[int], skip_special_tokens: bool = False) -> str:
    text = words.decode(tokens, skip_special_tokens=skip_special_tokens)
    return text if isinstance(text, str) else "".join(text)  # one sequence in: one string out
