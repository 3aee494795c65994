"""Tokens and text: the base model's tokenizer (from the files the server holds, loaded once per
process), prompts rendered for chat, and sampled tokens made into OpenAI's visible text.

Chat prompts use the model's own chat template (`apply_chat_template`, with the generation prompt).
A model without one gets `role_colon` ("User: …\\nAssistant:", the cookbook's format for base
models, written again here: the server does not import the cookbook), which also stops at "\\nUser:"."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from training import base_models

from .errors import OaiError

ROLE_COLON_STOP = "\nUser:"
DECODE_WINDOW = 6  # tokens of context each piece is decoded with (byte-level merges, spacing)


@lru_cache(maxsize=8)
def _tokenizer_at(model_dir: str) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(model_dir)


def tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    info = base_models.info(base_model)
    directory = Path(info.model_dir)
    return _tokenizer_at(str(directory.resolve()) if directory.is_dir() else info.model_dir)


def encode_prompt(words: PreTrainedTokenizerBase, prompt: str | list[int]) -> list[int]:
    return list(prompt) if isinstance(prompt, list) else list(words.encode(prompt, add_special_tokens=True))


def render_chat(words: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
    """The prompt tokens of `messages` with the assistant's turn opened, and the stop strings the
    format needs besides the model's end-of-sequence token."""
    if getattr(words, "chat_template", None):
        try:
            text = words.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except ImportError:
            raise  # the server lacks jinja2: not the caller's fault
        except Exception as error:  # noqa: BLE001 - jinja2's TemplateError (raise_exception), ValueError
            raise OaiError(400, f"the model's chat template refused these messages: {error}", "messages") from None
        return list(words.encode(str(text), add_special_tokens=False)), []
    tokens = [words.bos_token_id] if words.bos_token_id is not None else []
    for message in messages:
        tokens += _encode(words, f"{message['role'].capitalize()}:") + _encode(words, f" {message['content']}\n")
    return tokens + _encode(words, "Assistant:"), [ROLE_COLON_STOP]


def _encode(words: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(words.encode(text, add_special_tokens=False))


@dataclass(frozen=True)
class Visible:
    """One sampled sequence as OpenAI shows it: the tokens the text is made of (a final end-of-
    sequence token and anything from a stop string on are left out), each one's text piece and
    logprob, and why it ended. `top`: per token, its most likely alternatives as (text, logprob),
    most likely first (empty lists when none were asked)."""

    tokens: list[int]
    pieces: list[str]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"
    top: list[list[tuple[str, float]]]

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def visible(words: PreTrainedTokenizerBase, sequence: dict, stops: list[str], top_k: int = 0) -> Visible:
    """`sequence` as the sample result holds it. With `model_logprobs` (the request asked the sampler
    for top-k), each token's logprob is under the model's own distribution, the one its top
    alternatives (the first `top_k`) come from; otherwise it is the sampler's `logprobs`."""
    tokens = list(sequence["tokens"])
    model_logprobs = sequence.get("model_logprobs")
    logprobs = list(model_logprobs if model_logprobs is not None else sequence.get("logprobs") or [])
    logprobs += [0.0] * (len(tokens) - len(logprobs))
    ranked = [row[:top_k] for row in sequence.get("topk_logprobs") or []]
    stopped = sequence.get("stop_reason") == "stop"
    if stopped and tokens and tokens[-1] in set(words.all_special_ids):
        tokens, logprobs = tokens[:-1], logprobs[:-1]
    pieces = text_pieces(words, tokens)
    text = "".join(pieces)
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        stopped, kept, length = True, 0, 0
        while kept < len(pieces) and length + len(pieces[kept]) <= cut:
            length += len(pieces[kept])
            kept += 1
        # the token that crosses into the stop string keeps only its text before it
        tail = [pieces[kept][: cut - length]] if kept < len(pieces) and cut > length else []
        pieces = pieces[:kept] + tail
        tokens, logprobs = tokens[: len(pieces)], logprobs[: len(pieces)]
    top = [alternatives(words, tokens, i, ranked[i]) if i < len(ranked) else [] for i in range(len(tokens))]
    return Visible(tokens, pieces, logprobs, "stop" if stopped else "length", top)


def alternatives(
    words: PreTrainedTokenizerBase, tokens: list[int], index: int, ranked: list[list]
) -> list[tuple[str, float]]:
    """The text of each alternative ([token, logprob]) to `tokens[index]`, decoded after the same
    tokens of context as the sampled one, so that a word-initial token keeps its space; a special
    token shows as its name (e.g. `</s>`)."""
    context = tokens[max(0, index - DECODE_WINDOW) : index]
    before = _decode(words, context)
    special = set(words.all_special_ids)
    out = []
    for token, logprob in ranked:
        if token in special:
            out.append((str(words.convert_ids_to_tokens(token)), logprob))
            continue
        after = _decode(words, context + [token])
        out.append((after[len(before) :] if after.startswith(before) else _decode(words, [token]), logprob))
    return out


def text_pieces(words: PreTrainedTokenizerBase, tokens: list[int]) -> list[str]:
    """Each token's share of the decoded text, so that the pieces join to the whole: decoded with
    a few tokens of context, a piece that is an incomplete UTF-8 character waits for the next."""
    pieces, pending = [], 0
    for index in range(len(tokens)):
        start = max(0, index - pending - DECODE_WINDOW)
        before = _decode(words, tokens[start : index - pending])
        after = _decode(words, tokens[start : index + 1])
        if after.endswith("\ufffd") and index + 1 < len(tokens):
            pieces.append("")
            pending += 1
            continue
        pieces.append(
            after[len(before) :] if after.startswith(before) else _decode(words, tokens[index - pending : index + 1])
        )
        pending = 0
    return pieces


def _decode(words: PreTrainedTokenizerBase, tokens: list[int]) -> str:
    text = words.decode(tokens, skip_special_tokens=True)
    return text if isinstance(text, str) else "".join(text)
