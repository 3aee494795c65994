"""A literal tokenizer for renderer and data tests: one token per character, its code point, so
every expected token list can be written down by hand. BOS is "\\x01" (1), EOS is "\\x02" (2)."""

from __future__ import annotations


def codes(text: str) -> list[int]:
    return [ord(c) for c in text]


class CharTokenizer:
    bos_token_id = 1
    eos_token_id = 2
    # a chat template of its own: "[role]content<EOS>\n" per message, "[assistant]" to prompt
    chat_template = "fake"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return codes(text)

    def decode(self, tokens: list[int], skip_special_tokens: bool = False) -> str:
        special = {self.bos_token_id, self.eos_token_id} if skip_special_tokens else set()
        return "".join(chr(t) for t in tokens if t not in special)

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = False) -> str:
        text = "".join(f"[{m['role']}]{m['content']}\x02\n" for m in messages)
        return text + ("[assistant]" if add_generation_prompt else "")
