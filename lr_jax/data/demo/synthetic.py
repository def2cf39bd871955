"""The demo library: the tiny tokenizer, the "find the fact" pairs and the dataset writer (see the package
docstring); `DemoOptions`, the flags of ``python -m lr_jax.data.demo``."""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from typing import Any

from lr_jax.data.errors import DataError
from lr_jax.options import option

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>")
# One user turn, then the assistant turn closed by EOS; the generation prompt is "<|assistant|>".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|>{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}<|assistant|>{{ m['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_SYL_A = ("Vel", "Mar", "Tor", "Quen", "Dra", "Sil", "Bren", "Ost", "Kal", "Fen", "Lor", "Zan")
_SYL_B = ("oria", "esia", "avia", "undia", "ethia", "ovar")
_CITY_A = ("Ash", "Bel", "Cor", "Dun", "Elm", "Fair", "Glen", "Hal", "Iron", "Kings", "Lyn", "Mill")
_CITY_B = ("ford", "holm", "port", "wick", "mere", "gate", "haven")
FIRST_NAMES = ("Ada", "Boris", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
               "Kira", "Leon", "Mona", "Nils", "Olga", "Pavel", "Rosa", "Sven", "Tara", "Umar")
SURNAMES = ("Kerr", "Novak", "Lund", "Moreau", "Okafor", "Petrov", "Quist", "Ramos", "Silva", "Tanaka")
COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "black", "white", "grey", "brown",
           "violet", "teal", "amber", "crimson", "ivory", "indigo")
YEARS = tuple(str(y) for y in range(1800, 1900))
COUNTRIES = tuple(a + b for a in _SYL_A for b in _SYL_B)  # 72
CITIES = tuple(a + b for a in _CITY_A for b in _CITY_B)  # 84

_ADJ = ("quiet", "old", "narrow", "busy", "cold", "bright", "small", "ancient", "wide", "gentle")
_NOUN = ("river", "market", "bridge", "library", "harbour", "valley", "road", "garden", "tower", "forest")
_VERB = ("stood", "lay", "rested", "waited", "stretched", "glowed")
_FILLER = (
    "The {a} {n} {v} near the {n2}.",
    "Travellers often spoke about the {a} {n}.",
    "In winter the {n} was {a} and the {n2} was {a2}.",
    "Nobody remembered who built the {a} {n} by the {n2}.",
    "Every morning the {n} {v} beside the {a} {n2}.",
)

# kind -> (key type, value type, fact template, question template); the answer restates the fact.
FACTS: dict[str, tuple[str, str, str, str]] = {
    "capital": ("country", "city", "The capital of {k} is {v}.", "What is the capital of {k}?"),
    "born": ("person", "year", "{k} was born in {v}.", "In which year was {k} born?"),
    "colour": ("person", "colour", "The favourite colour of {k} is {v}.",
               "What is the favourite colour of {k}?"),
    "home": ("person", "city", "{k} lives in {v}.", "Where does {k} live?"),
}
_VALUES = {"city": CITIES, "year": YEARS, "colour": COLOURS}
# Few values per type: a tiny model can then learn to copy the value from the document, and no value is
# more often right than wrong, so memorising values does not help.
DEFAULT_NUM_VALUES = 4
_WORD_RE = re.compile(r"\w+|[^\w\s]+")


def _persons() -> tuple[str, ...]:
    return tuple(f"{f} {s}" for f in FIRST_NAMES for s in SURNAMES)


def vocabulary_texts() -> list[str]:
    """Texts that contain every word the demo generator can emit (train the tokenizer on these)."""
    words = [*COUNTRIES, *CITIES, *FIRST_NAMES, *SURNAMES, *COLOURS, *YEARS, *_ADJ, *_NOUN, *_VERB]
    texts = [" ".join(words), *_FILLER]
    for _, _, fact, question in FACTS.values():
        texts += [fact, question]
    return [re.sub(r"\{\w+\}", " ", t) for t in texts]


def count_words(text: str) -> int:
    """Token count under the demo tokenizer's pre-tokenizer (words and punctuation runs)."""
    return len(_WORD_RE.findall(text))


def build_tiny_tokenizer(out_dir: str, texts: list[str] | None = None, *, kind: str = "wordlevel",
                         vocab_size: int = 400) -> str:
    """Train a tiny tokenizer on `texts` (default `vocabulary_texts()`), add the chat template, save it.

    Args:
      out_dir: directory to `save_pretrained` into (loadable with `AutoTokenizer.from_pretrained`).
      kind: ``"wordlevel"`` (one token per word: the demo's values are single tokens) or ``"bpe"``
        (byte-level BPE of `vocab_size`: merges, offsets and prefix effects like real tokenizers).
    Returns:
      `out_dir`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts) if texts is not None else vocabulary_texts()
    if kind == "wordlevel":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.decoder = decoders.WordPiece()  # joins words with spaces
        trainer: Any = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS))
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        raise DataError(f"build_tiny_tokenizer: kind must be 'wordlevel' or 'bpe', got {kind!r}")
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])
    fast.chat_template = CHAT_TEMPLATE
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return out_dir


def _filler(rng: random.Random) -> str:
    return rng.choice(_FILLER).format(a=rng.choice(_ADJ), a2=rng.choice(_ADJ), n=rng.choice(_NOUN),
                                      n2=rng.choice(_NOUN), v=rng.choice(_VERB))


def value_pools(num_values: int) -> dict[str, tuple[str, ...]]:
    """The first `num_values` values of each type (spread over the full lists), e.g. 8 cities, 8 years."""
    if num_values < 2:
        raise DataError(f"demo: num_values must be >= 2, got {num_values}")
    out = {}
    for kind, pool in _VALUES.items():
        step = max(1, len(pool) // num_values)
        out[kind] = pool[::step][:num_values]
    return out


def _make_one(rng: random.Random, prompt_id: str, context_tokens: int, num_facts: int,
              distractor: str, pools: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    persons, countries = _persons(), COUNTRIES
    kinds = list(FACTS)
    used_keys: set[tuple[str, str]] = set()
    facts: list[list[str]] = []  # [kind, key, value]
    while len(facts) < num_facts:
        kind = rng.choice(kinds)
        key_type, val_type, _, _ = FACTS[kind]
        key = rng.choice(persons if key_type == "person" else countries)
        if (kind, key) in used_keys:
            continue
        used_keys.add((kind, key))
        facts.append([kind, key, rng.choice(pools[val_type])])
    kind, key, value = facts[rng.randrange(num_facts)]
    _, val_type, fact_t, question_t = FACTS[kind]
    others = sorted({f[2] for f in facts if FACTS[f[0]][1] == val_type} - {value})
    if distractor == "in_context" and others:
        wrong = rng.choice(others)
    else:
        wrong = rng.choice([v for v in pools[val_type] if v != value])
        for f in facts:  # keep the wrong value out of the document
            if f[2] == wrong:
                f[2] = rng.choice([v for v in pools[FACTS[f[0]][1]] if v != wrong])
    sentences = [FACTS[k][2].format(k=kk, v=v) for k, kk, v in facts]
    n_words = sum(count_words(s) for s in sentences)
    while n_words < context_tokens:
        s = _filler(rng)
        sentences.append(s)
        n_words += count_words(s)
    rng.shuffle(sentences)
    context = " ".join(sentences)
    chosen_reward, rejected_reward = round(rng.uniform(8.0, 10.0), 2), round(rng.uniform(0.0, 3.0), 2)
    pair: dict[str, Any] = {
        "prompt_id": prompt_id,
        "context": context,
        "query": question_t.format(k=key),
        "chosen": fact_t.format(k=key, v=value),
        "rejected": fact_t.format(k=key, v=wrong),
        "chosen_reward": chosen_reward,
        "rejected_reward": rejected_reward,
    }
    for dim in ("helpfulness", "logicality", "faithfulness", "completeness"):
        pair[f"chosen_{dim}"] = chosen_reward
        pair[f"rejected_{dim}"] = rejected_reward
    return pair


def make_synthetic_pairs(n: int, seed: int = 0, *, context_tokens: int = 300, num_facts: int = 12,
                         distractor: str = "absent", num_values: int = DEFAULT_NUM_VALUES,
                         id_prefix: str = "demo") -> list[dict[str, Any]]:
    """`n` preference pairs (dicts with every preference-record field), deterministic by `seed`.

    `context_tokens` is the document length in demo-tokenizer tokens (approximately: whole sentences).
    """
    if distractor not in ("absent", "in_context"):
        raise DataError(
            f"make_synthetic_pairs: distractor must be 'absent' or 'in_context', got {distractor!r}")
    if num_facts < 1:
        raise DataError(f"make_synthetic_pairs: num_facts must be >= 1, got {num_facts}")
    rng = random.Random(f"{id_prefix}:{seed}")
    pools = value_pools(num_values)
    return [_make_one(rng, f"{id_prefix}-{seed}-{i}", context_tokens, num_facts, distractor, pools)
            for i in range(n)]


def pairs_to_prompts(pairs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prompts-format rows (`id`, `context`, `query`, `answer` = chosen) for SFT."""
    return [{"id": p["prompt_id"], "context": p["context"], "query": p["query"], "answer": p["chosen"]}
            for p in pairs]


def write_demo_dataset(out_dir: str, *, n_train: int = 512, n_eval: int = 64, seed: int = 0,
                       context_tokens: int = 300, num_facts: int = 12, distractor: str = "absent",
                       num_shards: int = 2, compression: str | None = None,
                       num_values: int = DEFAULT_NUM_VALUES, tokenizer_kind: str = "wordlevel",
                       tokenizer_dir: str | None = None) -> dict[str, str]:
    """Write the whole demo: tokenizer, train/eval preference records, SFT prompts JSONL files.

    Layout: ``tokenizer/``, ``train/`` and ``eval/`` (preference-record datasets), ``prompts.jsonl`` and
    ``prompts_eval.jsonl`` (prompts with ``answer``). `out_dir` may be ``gs://``; the tokenizer is always
    written locally (``tokenizer_dir``, default ``<out_dir>/tokenizer``; required for a gs:// `out_dir`).
    Train and eval use disjoint id prefixes and random streams. Returns the paths by name.
    """
    from lr_jax.io import records, storage

    if tokenizer_dir is None:
        if storage.is_gcs(out_dir):
            raise DataError(f"{out_dir}: pass a local tokenizer_dir when writing the demo to gs://")
        tokenizer_dir = os.path.join(out_dir, "tokenizer")
    paths = {
        "tokenizer": tokenizer_dir,
        "train": storage.join(out_dir, "train"),
        "eval": storage.join(out_dir, "eval"),
        "prompts": storage.join(out_dir, "prompts.jsonl"),
        "prompts_eval": storage.join(out_dir, "prompts_eval.jsonl"),
    }
    build_tiny_tokenizer(paths["tokenizer"], kind=tokenizer_kind)
    kw = dict(context_tokens=context_tokens, num_facts=num_facts, distractor=distractor,
              num_values=num_values)
    splits = {"train": make_synthetic_pairs(n_train, seed, id_prefix="demo-train", **kw),
              "eval": make_synthetic_pairs(n_eval, seed, id_prefix="demo-eval", **kw)}
    for split, pairs in splits.items():
        fingerprint = "-".join(str(x) for x in ("demo", split, seed, len(pairs), context_tokens, num_facts,
                                                 distractor, num_values))
        meta = {"source": "lr_jax.data.demo", "seed": seed, "split": split, "context_tokens": context_tokens,
                "distractor": distractor, "fingerprint": fingerprint}
        records.write_pairs(pairs, paths[split], num_shards=num_shards, compression=compression,
                            metadata=meta, overwrite=True)
        key = "prompts" if split == "train" else "prompts_eval"
        rows = pairs_to_prompts(pairs)
        storage.write_text(paths[key], "".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
    return paths


@dataclass(frozen=True)
class DemoOptions:
    """The flags of ``python -m lr_jax.data.demo`` (`lr_jax.options`: flags, ``--help`` and checks)."""

    out: str = option(help="output directory (local or gs://)")
    n_train: int = option(512, ge=1, help="training pairs")
    n_eval: int = option(64, ge=1, help="held-out pairs")
    seed: int = option(0, ge=0, help="the data's seed")
    context_tokens: int = option(300, ge=1, help="document length, about")
    num_facts: int = option(12, ge=1, help="facts per document")
    num_values: int = option(DEFAULT_NUM_VALUES, ge=2, help="values per fact type")
    distractor: str = option("absent", choices=("absent", "in_context"),
                             help="where the wrong answer comes from")
    num_shards: int = option(2, ge=1, help="record files per split")
    gzip: bool = option(False, help="GZIP the record files")
    tokenizer_kind: str = option("wordlevel", choices=("wordlevel", "bpe"), help="tokenizer model")
    tokenizer_dir: str | None = option(None, help="local tokenizer dir (required for gs:// --out)")
