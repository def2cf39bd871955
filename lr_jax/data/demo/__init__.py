"""CPU demo data made by code: a tiny tokenizer and long-context "find the fact" preference pairs.

Each example is a document of ~`context_tokens` tokens: a dozen facts about fictional countries and people
("The capital of Veloria is Marnhold.", "Ada Kerr was born in 1843.", ...) shuffled among filler sentences,
then a question about ONE fact. ``chosen`` is the correct answer sentence; ``rejected`` is the same
sentence with a different value of the same type (another city / year / colour). With the default
``distractor="absent"`` the wrong value never occurs in the document, so a tiny model can learn the task
by copying from the context (held-out reward accuracy well above 0.9 after a few hundred CPU steps is the
target); ``distractor="in_context"`` takes it from another fact in the document (harder: needs binding).

Everything is deterministic by seed, needs no downloads, and uses only word lists defined here, so the
tokenizer built from `vocabulary_texts()` covers every generated word (no unknown tokens).

Modules: `synthetic` (the library and `DemoOptions`), `__main__` (the CLI, ``python -m lr_jax.data.demo``;
imported only by `main`). Importing this package loads no CLI.
"""

from __future__ import annotations

from lr_jax.data.demo.synthetic import (
    CHAT_TEMPLATE,
    CITIES,
    COLOURS,
    COUNTRIES,
    DEFAULT_NUM_VALUES,
    FACTS,
    FIRST_NAMES,
    SPECIAL_TOKENS,
    SURNAMES,
    YEARS,
    DemoOptions,
    build_tiny_tokenizer,
    count_words,
    make_synthetic_pairs,
    pairs_to_prompts,
    value_pools,
    vocabulary_texts,
    write_demo_dataset,
)

__all__ = [
    "CHAT_TEMPLATE",
    "CITIES",
    "COLOURS",
    "COUNTRIES",
    "DEFAULT_NUM_VALUES",
    "FACTS",
    "FIRST_NAMES",
    "SPECIAL_TOKENS",
    "SURNAMES",
    "YEARS",
    "DemoOptions",
    "build_tiny_tokenizer",
    "count_words",
    "main",
    "make_synthetic_pairs",
    "pairs_to_prompts",
    "value_pools",
    "vocabulary_texts",
    "write_demo_dataset",
]


def main(argv: list[str] | None = None) -> int:
    """The `python -m lr_jax.data.demo` CLI (loaded on call, so importing the library does not load it)."""
    from lr_jax.data.demo.__main__ import main as cli_main

    return cli_main(argv)
