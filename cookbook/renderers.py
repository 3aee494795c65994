"""Renderers: chat messages <-> tokens, with a training weight for every token.

A renderer owns one chat format. Its contract, checked by the tests:
- `build_supervised_example(messages)` == `build_generation_prompt(messages[:-1])` followed by the
  completion the model should produce for the last message, stop sequence included;
- `parse_response(completion)` gives the last message back;
- prompt tokens (everything the model is given rather than asked to produce) weigh 0.

`role_colon` is the format for base models ("User: ...\\nAssistant: ..."); `chat_template` renders
with the tokenizer's own chat template, so it matches what the model's authors trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

from lorasmith import ModelInput


class Message(TypedDict):
    role: str
    content: str


class TrainOnWhat(StrEnum):
    """Which messages' tokens get weight 1 in a supervised example."""

    LAST_ASSISTANT_MESSAGE = "last_assistant_message"
    ALL_ASSISTANT_MESSAGES = "all_assistant_messages"
    ALL_TOKENS = "all_tokens"


@dataclass(frozen=True)
class ParsedResponse:
    message: Message
    terminated: bool  # False: no stop sequence (the completion ran out of tokens)


class RendererError(ValueError):
    """Messages a renderer cannot render (an unknown role, a template that is not prefix-stable)."""


class Renderer:
    """What every renderer offers; the subclasses differ in how one message becomes tokens."""

    name: str

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def build_supervised_example(
        self, messages: list[Message], train_on_what: TrainOnWhat = TrainOnWhat.ALL_ASSISTANT_MESSAGES
    ) -> tuple[list[int], list[float]]:
        """The tokens of a whole conversation and each token's training weight (0.0 or 1.0)."""
        raise NotImplementedError

    def build_generation_prompt(self, messages: list[Message]) -> ModelInput:
        """The tokens that ask the model for the next assistant message, ending in its header."""
        raise NotImplementedError

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        """The assistant message a sampled completion holds, cut at the first stop sequence."""
        raise NotImplementedError

    def get_stop_sequences(self) -> list[str] | list[int]:
        """What to pass as `SamplingParams(stop=...)`: strings or token ids."""
        raise NotImplementedError

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


def _trained(index: int, message: Message, messages: list[Message], train_on_what: TrainOnWhat) -> bool:
    if train_on_what is TrainOnWhat.ALL_TOKENS:
        return True
    if message["role"] != "assistant":
        return False
    if train_on_what is TrainOnWhat.ALL_ASSISTANT_MESSAGES:
        return True
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return index == last_assistant


class RoleColonRenderer(Renderer):
    """`User: {content}\\nAssistant: {content}\\nUser:` for base models.

    Each message is a header (`User:`) and its content (` {content}\\n`). The last message also gets
    the next header, `User:`, trained with it, so the model learns to end its turn with the stop
    sequence `\\nUser:`. A BOS token, if the tokenizer has one, starts the conversation (weight 0).
    """

    name = "role_colon"
    stop_sequence = "\nUser:"

    def _header(self, role: str) -> list[int]:
        if role not in ("system", "user", "assistant"):
            raise RendererError(f"role_colon renders system, user and assistant messages, not {role!r}")
        return self._encode(f"{role.capitalize()}:")

    def _prefix(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None else []

    def build_supervised_example(
        self, messages: list[Message], train_on_what: TrainOnWhat = TrainOnWhat.ALL_ASSISTANT_MESSAGES
    ) -> tuple[list[int], list[float]]:
        prefix = self._prefix()
        tokens, weights = list(prefix), [1.0 if train_on_what is TrainOnWhat.ALL_TOKENS else 0.0] * len(prefix)
        for index, message in enumerate(messages):
            header = self._header(message["role"])
            content = self._encode(f" {message['content']}\n")
            if index == len(messages) - 1:
                content += self._encode(self.stop_sequence.lstrip("\n"))
            trained = _trained(index, message, messages, train_on_what)
            tokens += header + content
            weights += [1.0 if train_on_what is TrainOnWhat.ALL_TOKENS else 0.0] * len(header)
            weights += [1.0 if trained else 0.0] * len(content)
        return tokens, weights

    def build_generation_prompt(self, messages: list[Message]) -> ModelInput:
        tokens = self._prefix()
        for message in messages:
            tokens += self._header(message["role"]) + self._encode(f" {message['content']}\n")
        return ModelInput.from_ints(tokens + self._header("assistant"))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        content, found, _ = text.partition(self.stop_sequence)
        return ParsedResponse(Message(role="assistant", content=content.removeprefix(" ")), terminated=bool(found))

    def get_stop_sequences(self) -> list[str]:
        return [self.stop_sequence]


class ChatTemplateRenderer(Renderer):
    """The tokenizer's own chat template (`tokenizer.apply_chat_template`), for any chat model.

    Message k's tokens are what rendering messages[:k+1] adds to rendering messages[:k]; its header
    is what the generation prompt of messages[:k] adds. So the template must be prefix-stable (each
    rendering extends the one before), which common templates are; one that is not is refused with
    a RendererError. A trained message weighs 1 through its end-of-turn token (the tokenizer's EOS,
    the stop sequence) and 0 after it (e.g. the newline some templates put between turns).
    """

    name = "chat_template"

    def __init__(self, tokenizer: Any):
        super().__init__(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise RendererError("the tokenizer has no chat_template; use the role_colon renderer")
        if tokenizer.eos_token_id is None:
            raise RendererError("the tokenizer has no eos_token_id to end an assistant turn with")

    def _render(self, messages: list[Message], add_generation_prompt: bool = False) -> list[int]:
        if not messages and not add_generation_prompt:
            return []
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        return self._encode(text)

    def build_supervised_example(
        self, messages: list[Message], train_on_what: TrainOnWhat = TrainOnWhat.ALL_ASSISTANT_MESSAGES
    ) -> tuple[list[int], list[float]]:
        tokens: list[int] = []
        weights: list[float] = []
        for index, message in enumerate(messages):
            rendered = self._render(messages[: index + 1])
            if rendered[: len(tokens)] != tokens:
                raise RendererError(f"the chat template is not prefix-stable at message {index}")
            added = rendered[len(tokens) :]
            if train_on_what is TrainOnWhat.ALL_TOKENS:
                added_weights = [1.0] * len(added)
            elif _trained(index, message, messages, train_on_what):
                added_weights = self._assistant_weights(messages[:index], tokens, added, index)
            else:
                added_weights = [0.0] * len(added)
            tokens, weights = rendered, weights + added_weights
        return tokens, weights

    def _assistant_weights(self, before: list[Message], tokens: list[int], added: list[int], index: int) -> list[float]:
        prompt = self._render(before, add_generation_prompt=True)
        header = prompt[len(tokens) :]
        if prompt[: len(tokens)] != tokens or added[: len(header)] != header:
            raise RendererError(f"the chat template's generation prompt does not start message {index}")
        body = added[len(header) :]
        end = body.index(self.tokenizer.eos_token_id) + 1 if self.tokenizer.eos_token_id in body else len(body)
        return [0.0] * len(header) + [1.0] * end + [0.0] * (len(body) - end)

    def build_generation_prompt(self, messages: list[Message]) -> ModelInput:
        return ModelInput.from_ints(self._render(messages, add_generation_prompt=True))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        eos = self.tokenizer.eos_token_id
        terminated = eos in tokens
        content = tokens[: tokens.index(eos)] if terminated else tokens
        text = self.tokenizer.decode(content, skip_special_tokens=False)
        return ParsedResponse(Message(role="assistant", content=text), terminated=terminated)

    def get_stop_sequences(self) -> list[int]:
        return [self.tokenizer.eos_token_id]


class CompletionRenderer(Renderer):
    """`{user content} {assistant content}\n`: plain text completion, no role headers, for tiny base
    models. The prompt ends with the user's own last token, so a model that has not learned to read
    back through its context (a randomly initialised one) can still answer from it; the answer is
    one line, ended by the stop sequence `\n`. One user message, then one assistant message.
    """

    name = "completion"
    stop_sequence = "\n"

    def _check(self, messages: list[Message], generation: bool) -> None:
        roles = [m["role"] for m in messages]
        if roles != (["user"] if generation else ["user", "assistant"]):
            raise RendererError("completion renders one user message followed by one assistant message")

    def _prompt(self, messages: list[Message]) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + self._encode(messages[0]["content"])

    def build_supervised_example(
        self, messages: list[Message], train_on_what: TrainOnWhat = TrainOnWhat.ALL_ASSISTANT_MESSAGES
    ) -> tuple[list[int], list[float]]:
        self._check(messages, generation=False)
        prompt = self._prompt(messages)
        answer = self._encode(f" {messages[1]['content']}{self.stop_sequence}")
        prompt_weight = 1.0 if train_on_what is TrainOnWhat.ALL_TOKENS else 0.0
        return prompt + answer, [prompt_weight] * len(prompt) + [1.0] * len(answer)

    def build_generation_prompt(self, messages: list[Message]) -> ModelInput:
        self._check(messages, generation=True)
        return ModelInput.from_ints(self._prompt(messages))

    def parse_response(self, tokens: list[int]) -> ParsedResponse:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        content, found, _ = text.partition(self.stop_sequence)
        return ParsedResponse(Message(role="assistant", content=content.removeprefix(" ")), terminated=bool(found))

    def get_stop_sequences(self) -> list[str]:
        return [self.stop_sequence]


RENDERERS: dict[str, type[Renderer]] = {
    "role_colon": RoleColonRenderer,
    "chat_template": ChatTemplateRenderer,
    "completion": CompletionRenderer,
}


def get_renderer(name: str, tokenizer: Any) -> Renderer:
    """The renderer called `name` ("role_colon", "chat_template" or "completion") over `tokenizer`."""
    if name not in RENDERERS:
        raise RendererError(f"unknown renderer {name!r}; choose one of {sorted(RENDERERS)}")
    return RENDERERS[name](tokenizer)
