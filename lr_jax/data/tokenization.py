"""Chat-template tokenization of (context, query, response) through a local `transformers` tokenizer.

The policy prompt is one user turn ``context + "\\n\\n" + query`` (the LongReward recipe); a response is the
assistant turn. Token ids are produced so that

    prompt_ids + response_ids == apply_chat_template([user, assistant], tokenize=True)

whenever the template is *prefix-stable* (rendering the prompt with ``add_generation_prompt=True`` is a
string prefix of the rendered full conversation) and the tokenizer does not merge across that boundary —
true for Llama-3, Qwen2, GLM-4 style templates and for the demo tokenizer (tested). The response ids are
the tokens of the text the template adds after the generation prompt, so they include the template's
end-of-turn / EOS tokens: the last content token learns to predict EOS.

The prompt is tokenized once, from the rendered template text, with character offsets; the token span
that lies wholly inside the context is recorded so the packer can cut tokens out of the middle of the
context (never the template, the query or a response) without re-tokenizing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from lr_jax.data.errors import DataError

PROMPT_SEPARATOR = "\n\n"


def prompt_text(context: str, query: str) -> str:
    """The user-turn content: ``context + "\\n\\n" + query`` (a missing context gives just the query)."""
    return f"{context}{PROMPT_SEPARATOR}{query}" if context else query


@dataclass(frozen=True)
class EncodedPrompt:
    """A tokenized prompt.

    Attributes:
      ids: `[prompt_len]` int32 token ids of the rendered user turn plus generation prompt.
      context_span: `(start, end)` token indices; `ids[start:end]` lie wholly inside the context text and
        may be removed by middle truncation. `(0, 0)` when there is no removable context.
    """

    ids: np.ndarray
    context_span: tuple[int, int]


class ChatTokenizer:
    """Turns prompts and responses into token ids with the tokenizer's chat template."""

    def __init__(self, tokenizer: Any, *, name: str = "<tokenizer>") -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise DataError(f"{name}: a fast (Rust) tokenizer is required for offset mapping")
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(f"{name}: tokenizer has no chat_template")
        self.tokenizer = tokenizer
        self.name = name
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                          else (tokenizer.eos_token_id or 0))
        self.eos_id = None if tokenizer.eos_token_id is None else int(tokenizer.eos_token_id)
        self.vocab_size = len(tokenizer)

    @classmethod
    def from_dir(cls, path: str) -> ChatTokenizer:
        """Load `AutoTokenizer` from a local directory (never from a hub)."""
        from transformers import AutoTokenizer

        if not os.path.isdir(path):
            raise DataError(f"{path}: tokenizer directory does not exist")
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # transformers raises many types; report them as one clear error
            raise DataError(f"{path}: cannot load tokenizer: {type(e).__name__}: {e}") from None
        return cls(tok, name=path)

    # --- rendering -------------------------------------------------------------------------------------

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt)
        if not isinstance(text, str):
            raise DataError(f"{self.name}: apply_chat_template(tokenize=False) did not return a string")
        return text

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- public API ------------------------------------------------------------------------------------

    def encode_prompt(self, context: str, query: str) -> EncodedPrompt:
        """Tokenize the user turn + generation prompt; locate the context's token span."""
        return self.encode_user_turn(prompt_text(context, query), (0, len(context)))

    def encode_user_turn(self, content: str, removable: tuple[int, int] | None = None) -> EncodedPrompt:
        """Tokenize `content` as one user turn + generation prompt.

        `removable` is a character range of `content` (default: all of it) whose wholly-inside tokens form
        `context_span`, the part middle truncation may cut.
        """
        text = self._render([{"role": "user", "content": content}], add_generation_prompt=True)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = np.asarray(enc["input_ids"], np.int32)
        span = (0, 0)
        r0, r1 = removable if removable is not None else (0, len(content))
        start = text.find(content) if r1 > r0 else -1
        if start < 0 and r1 > r0 and content.strip() != content:
            # Templates that trim the message (Llama-3's `| trim`): locate the trimmed text instead.
            lead = len(content) - len(content.lstrip())
            start = text.find(content.strip())
            if start >= 0:
                start -= lead
                r0, r1 = max(r0, lead), min(r1, len(content.rstrip()))
        if start >= 0:
            c0, c1 = start + r0, start + r1
            offsets = enc["offset_mapping"]
            inside = [i for i, (a, b) in enumerate(offsets) if a >= c0 and b <= c1 and b > a]
            if inside:
                # Contiguous by construction (offsets are monotone); tokens straddling a boundary are kept.
                span = (inside[0], inside[-1] + 1)
        return EncodedPrompt(ids=ids, context_span=span)

    def encode_response(self, context: str, query: str, response: str) -> np.ndarray:
        """`[response_len]` int32 ids of the assistant turn as the template renders it (incl. EOS)."""
        user = {"role": "user", "content": prompt_text(context, query)}
        head = self._render([user], add_generation_prompt=True)
        full = self._render([user, {"role": "assistant", "content": response}], add_generation_prompt=False)
        # A template that is not prefix-stable (it rewrites earlier turns when an answer follows) falls
        # back to the raw response plus EOS, the best approximation of what generation would produce.
        prefix_stable = full.startswith(head)
        suffix = full[len(head):] if prefix_stable else response + (self.tokenizer.eos_token or "")
        return np.asarray(self._ids(suffix), np.int32)

    def full_conversation_ids(self, context: str, query: str, response: str) -> np.ndarray:
        """Reference: the template applied to the whole conversation, tokenized in one go (for tests)."""
        user = {"role": "user", "content": prompt_text(context, query)}
        full = self._render([user, {"role": "assistant", "content": response}], add_generation_prompt=False)
        return np.asarray(self._ids(full), np.int32)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids]))
