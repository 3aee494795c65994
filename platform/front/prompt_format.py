"""The playground's prompt-format hint: how the run's renderer lays out a prompt and an answer, so
a person types a prompt the adapter was trained on, with the stop sequences that end its answers.

The renderer is the one the run names in its `user_metadata` (the cookbook records `renderer`,
Tinker's cookbook `renderer_name`); a run that names none, or one unknown here, gets the base
model's chat template when its tokenizer has one, else the plain `role_colon` layout. Rendering goes
through the cookbook's own renderers, so the hint is what the recipe really sent. Also: whitespace
made visible for token cells (a newline token is otherwise a blank cell).
"""

from __future__ import annotations

from dataclasses import dataclass

from cookbook.renderers import RENDERERS, Message, TrainOnWhat, get_renderer
from training.models import TrainingRun

from . import playground

YOUR_TEXT = "{your text}"
ANSWER = "{answer}"
RENDERER_KEYS = ("renderer", "renderer_name")  # the cookbook's, Tinker cookbook's


def visible(text: str) -> str:
    """`text` with newline, tab, space and carriage return shown as ↵ → · ␍."""
    return text.translate(playground.VISIBLE)


@dataclass(frozen=True)
class PromptFormat:
    renderer: str
    source: str  # why this renderer, in words
    prefix: str  # what goes before the user's text, as typed into the playground
    suffix: str  # ... and after it
    example: str  # a trained example, user text and answer as placeholders, whitespace visible
    stop: list[str]  # the renderer's stop strings (as typed: \n escaped)
    stop_tokens: list[str]  # the renderer's stop tokens, by their text (always stops: end of sequence)

    @property
    def template(self) -> str:
        return visible(self.prefix) + YOUR_TEXT + visible(self.suffix)


def renderer_of(run: TrainingRun, has_chat_template: bool) -> tuple[str, str]:
    """(renderer name, why it was chosen)."""
    metadata = run.user_metadata if isinstance(run.user_metadata, dict) else {}
    named = next((str(metadata[key]) for key in RENDERER_KEYS if metadata.get(key)), "")
    if named in RENDERERS:
        return named, "the renderer this run names in its metadata"
    fallback = "chat_template" if has_chat_template else "role_colon"
    if named:
        return fallback, f"this run's metadata names renderer {named!r}, unknown here; the base model's default"
    return fallback, "no renderer named in this run's metadata; the base model's default"


def hint(run: TrainingRun) -> PromptFormat | None:
    """The prompt format of `run`'s renderer over its base model's tokenizer; None if the
    tokenizer cannot be loaded or the renderer cannot render a one-turn chat."""
    try:
        words = playground.tokenizer(run.base_model)
    except (OSError, ValueError):
        return None
    name, source = renderer_of(run, bool(getattr(words, "chat_template", None)))
    renderer = get_renderer(name, words)
    try:
        prompt = renderer.build_generation_prompt([Message(role="user", content=YOUR_TEXT)]).to_ints()
        trained, _ = renderer.build_supervised_example(
            [Message(role="user", content=YOUR_TEXT), Message(role="assistant", content=ANSWER)],
            TrainOnWhat.ALL_ASSISTANT_MESSAGES,
        )
    except ValueError:  # RendererError, or a chat template that refuses the roles
        return None
    prompt_text = playground.text_of(words, prompt)
    if YOUR_TEXT not in prompt_text:
        return None
    prefix, _, suffix = prompt_text.partition(YOUR_TEXT)
    prefix = playground.without_added_bos(words, prefix)
    stops = renderer.get_stop_sequences()
    texts = [s for s in stops if isinstance(s, str)]
    tokens = [playground.text_of(words, [s]) for s in stops if isinstance(s, int)]
    example = visible(playground.without_added_bos(words, playground.text_of(words, trained)))
    return PromptFormat(
        renderer=name,
        source=source,
        prefix=prefix,
        suffix=suffix,
        example=example.replace(visible(YOUR_TEXT), YOUR_TEXT).replace(visible(ANSWER), ANSWER),
        stop=[escape(s) for s in texts],
        stop_tokens=tokens,
    )


def escape(text: str) -> str:
    """A stop string as typed in the playground's field: backslash, newline and tab escaped."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def unescape(text: str) -> str:
    """The inverse of `escape`: \\n, \\t and \\\\ become newline, tab and backslash."""
    out, chars = [], iter(text)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, "")
        out.append({"n": "\n", "t": "\t", "\\": "\\"}.get(following, "\\" + following))
    return "".join(out)
