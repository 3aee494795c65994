"""An OpenAI completions / chat completions body, checked: every parameter this server implements
is read with its type and range, and any other one is refused by name (a 400), never ignored.
Parameters sent as null count as not sent, as OpenAI's API does."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import OaiError

COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "logprobs", "stream", "stream_options"}
COMMON |= {"user"}  # an end-user id for the caller's own logs: it changes nothing sampled
COMPLETIONS = COMMON | {"prompt"}
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs"}
# accepted at the value that means "off", refused at any other
OFF_VALUES: dict[str, Any] = {"presence_penalty": 0, "frequency_penalty": 0, "echo": False, "best_of": 1}
MAX_STOPS = 4
MAX_SAMPLES = 128
MAX_TOP_LOGPROBS = 20  # OpenAI's bound for chat; completions (OpenAI: 5) get the same here


@dataclass
class SampleCall:
    """What one call asks for, in OpenAI's terms."""

    model: str
    n: int = 1
    max_tokens: int | None = None  # None: the server's default for the endpoint
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0  # alternatives per sampled position (chat top_logprobs, completions logprobs)
    stream: bool = False
    include_usage: bool = False
    prompt: str | list[int] | None = None  # completions
    messages: list[dict[str, str]] = field(default_factory=list)  # chat, content as plain text

    @property
    def topk_sample_logprobs(self) -> int:
        """What to ask the sampler for: with logprobs on, at least the top-1, so that every token's
        `logprob` comes from the model's own distribution (before temperature and top_p, as
        OpenAI's) whatever the temperature; 0 (nothing extra computed) without logprobs."""
        return max(self.top_logprobs, 1) if self.logprobs else 0

    def sampling_params(self, max_tokens: int, extra_stops: list[str]) -> dict:
        """Tinker sampling_params for the intake."""
        params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p}
        stops = self.stop + [s for s in extra_stops if s not in self.stop]
        if stops:
            params["stop"] = stops
        if self.seed is not None:
            params["seed"] = self.seed
        return params


def parse(body: dict, chat: bool) -> SampleCall:
    given = {key: value for key, value in body.items() if value is not None}
    _refuse_unsupported(given, CHAT if chat else COMPLETIONS)
    model = given.get("model")
    if not isinstance(model, str) or not model:
        raise OaiError(400, "model is required (a base model, a tinker://…/sampler_weights/… path or a name)", "model")
    call = SampleCall(model=model)
    call.n = _integer(given, "n", 1, 1, MAX_SAMPLES)
    max_tokens = given.get("max_completion_tokens", given.get("max_tokens")) if chat else given.get("max_tokens")
    if max_tokens is not None:
        name = "max_completion_tokens" if chat and "max_completion_tokens" in given else "max_tokens"
        call.max_tokens = _integer({name: max_tokens}, name, 1, 1, None)
    call.temperature = _number(given, "temperature", 1.0, 0.0, 2.0)
    call.top_p = _number(given, "top_p", 1.0, 0.0, 1.0)
    if call.top_p == 0:
        raise OaiError(400, "top_p must be above 0 (use temperature 0 for greedy decoding)", "top_p")
    call.stop = _stops(given.get("stop"))
    if "seed" in given:
        call.seed = _integer(given, "seed", 0, None, None)
    call.stream = _boolean(given, "stream")
    call.include_usage = _stream_options(given, call.stream)
    if chat:
        call.logprobs = _boolean(given, "logprobs")
        call.top_logprobs = _integer(given, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
        if call.top_logprobs and not call.logprobs:
            raise OaiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        call.messages = _messages(given.get("messages"))
    else:
        if "logprobs" in given:  # completions: an integer, the alternatives per position (0: none)
            call.top_logprobs = _integer(given, "logprobs", 0, 0, MAX_TOP_LOGPROBS)
            call.logprobs = True
        call.prompt = _prompt(given.get("prompt"))
    return call


def _refuse_unsupported(given: dict, supported: set[str]) -> None:
    for name, value in given.items():
        if name in supported or (name in OFF_VALUES and value == OFF_VALUES[name]):
            continue
        if name in OFF_VALUES:
            message = f"{name} is not supported by this server; leave it at {OFF_VALUES[name]!r} or leave it out"
        else:
            message = f"{name} is not a parameter this server supports; supported: {', '.join(sorted(supported))}"
        raise OaiError(400, message, name, "unsupported_parameter")


def _integer(given: dict, name: str, default: int, low: int | None, high: int | None) -> int:
    value = given.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OaiError(400, f"{name} must be an integer", name)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise OaiError(400, f"{name} must be {bounds}, got {value}", name)
    return value


def _number(given: dict, name: str, default: float, low: float, high: float) -> float:
    value = given.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OaiError(400, f"{name} must be a number", name)
    if not low <= value <= high:
        raise OaiError(400, f"{name} must be between {low} and {high}, got {value}", name)
    return float(value)


def _boolean(given: dict, name: str) -> bool:
    value = given.get(name, False)
    if not isinstance(value, bool):
        raise OaiError(400, f"{name} must be true or false", name)
    return value


def _stops(value: object) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if stops is None:
        return []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise OaiError(400, f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop")
    return list(stops)


def _stream_options(given: dict, stream: bool) -> bool:
    options = given.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise OaiError(400, "stream_options is only allowed with stream: true", "stream_options")
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise OaiError(400, "stream_options supports only include_usage", "stream_options")
    include = options.get("include_usage", False)
    if not isinstance(include, bool):
        raise OaiError(400, "stream_options.include_usage must be true or false", "stream_options.include_usage")
    return include


def _prompt(value: object) -> str | list[int]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        raise OaiError(400, "one prompt per request: send several requests, or n for several samples", "prompt")
    raise OaiError(400, "prompt must be a non-empty string or a list of token ids", "prompt")


ROLES = ("system", "developer", "user", "assistant")


def _messages(value: object) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise OaiError(400, "messages must be a non-empty list of {role, content}", "messages")
    messages = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise OaiError(400, f"{where} must be an object with role and content", where)
        unknown = set(message) - {"role", "content"}
        if unknown:
            raise OaiError(400, f"{where}: {', '.join(sorted(unknown))} not supported (text messages only)", where)
        role = message.get("role")
        if role not in ROLES:
            raise OaiError(400, f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        messages.append({"role": "system" if role == "developer" else role, "content": _content(message, where)})
    return messages


def _content(message: dict, where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        texts = [p.get("text") for p in content]
        if all(isinstance(t, str) for t in texts):
            return "".join(texts)
    raise OaiError(400, f"{where}.content must be a string or a list of text parts", f"{where}.content")
