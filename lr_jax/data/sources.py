"""Reading training items: preference records (DPO) and prompts JSONL with answers (SFT), plus the split.

Everything returned is text; tokenization happens later, lazily. Each host reads only its shard: whole files
by `shard_index` / `shard_count` (`read_pair_examples`, for `DataPipeline.from_path`), or the records of some
global batch rows by their global record index (`read_pair_rows`, for the trainer). Host identity is passed
in by the caller and never looked up here.

Held-out split: an item belongs to ``eval`` iff ``eval_bucket(prompt_id) < eval_fraction`` where
``eval_bucket`` is the first 8 bytes of ``sha256(salt + ":" + prompt_id)`` as a fraction in [0, 1). It
depends only on the prompt id (all pairs of one prompt fall on the same side), not on file order, shard
count or host — so train and eval never share a prompt, and the split is the same on every machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from lr_jax.data.errors import DataError
from lr_jax.io import jsonl

SPLITS = ("train", "eval", "all")
DEFAULT_SALT = "lr_jax-eval-v1"


@dataclass(frozen=True)
class Example:
    """One item as text. `responses` is ``(chosen, rejected)`` for DPO and ``(answer,)`` for SFT."""

    prompt_id: str
    context: str
    query: str
    responses: tuple[str, ...]
    source: str  # "<file>: record <n>" — used in error messages


def eval_bucket(prompt_id: str, salt: str = DEFAULT_SALT) -> float:
    """Deterministic pseudo-uniform number in [0, 1) from a prompt id."""
    digest = hashlib.sha256(f"{salt}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def in_split(prompt_id: str, split: str, eval_fraction: float, salt: str = DEFAULT_SALT) -> bool:
    """Whether `prompt_id` belongs to `split` ("train", "eval" or "all")."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return True
    is_eval = eval_bucket(prompt_id, salt) < eval_fraction
    return is_eval if split == "eval" else not is_eval


def _text_field(rec: dict[str, Any], key: str, where: str) -> str:
    if key not in rec or rec[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    val = rec[key]
    if isinstance(val, bytes):
        try:
            val = val.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(f"{where}: field {key!r} is not valid UTF-8") from None
    if not isinstance(val, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(val).__name__}")
    return val


def _id_field(rec: dict[str, Any], key: str, where: str) -> str:
    if key not in rec or rec[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    val = rec[key]
    if isinstance(val, bytes):
        val = val.decode("utf-8", "replace")
    if isinstance(val, bool) or not isinstance(val, (str, int)):
        raise DataError(f"{where}: field {key!r} must be a string or integer, got {type(val).__name__}")
    return str(val)


def examples_from_pairs(records: Iterable[dict[str, Any]], *, source: str, split: str = "all",
                        eval_fraction: float = 0.0, objective: str = "dpo") -> list[Example]:
    """Validate preference-record dicts (keys prompt_id, context, query, chosen, rejected) into Examples.

    With ``objective="sft"`` the chosen response is the answer.
    """
    out = []
    for n, rec in enumerate(records):
        ex = _pair_example(rec, f"{source}: record {n}", objective)
        if in_split(ex.prompt_id, split, eval_fraction):
            out.append(ex)
    return out


def _pair_example(rec: dict[str, Any], where: str, objective: str) -> Example:
    """One validated preference record (`where` names it in errors)."""
    pid = _id_field(rec, "prompt_id", where)
    where = f"{where} (prompt_id={pid})"
    context, query = _text_field(rec, "context", where), _text_field(rec, "query", where)
    chosen = _text_field(rec, "chosen", where)
    rejected = _text_field(rec, "rejected", where) if objective == "dpo" else ""
    responses = (chosen, rejected) if objective == "dpo" else (chosen,)
    return Example(pid, context, query, responses, where)


@dataclass
class RowExamples:
    """Examples of some global batch rows: row `j` holds the records whose global index ``r ≡ j (mod B)``,
    in ``r`` order, split into train and eval (`eval` is empty without an `eval_fraction`)."""

    train: dict[int, list[Example]]
    eval: dict[int, list[Example]]
    num_records: int  # in the whole dataset, every file
    num_files: int  # shard files in the dataset
    files_read: list[str]  # the shard files this host opened


def read_pair_rows(path: str, rows: Iterable[int], batch_size: int, *, objective: str = "dpo",
                   eval_fraction: float = 0.0) -> RowExamples:
    """The examples of batch rows `rows` from a preference-record directory, reading only the files that hold
    them (`lr_jax.io.records.files_for_residues`); the split is by prompt id, as everywhere."""
    from lr_jax.io import records

    rows = sorted({int(j) for j in rows})
    train: dict[int, list[tuple[int, Example]]] = {j: [] for j in rows}
    held: dict[int, list[tuple[int, Example]]] = {j: [] for j in rows}
    try:
        meta = records.committed_metadata(path)
        n = int(meta.get("num_records", 0))
        shards = list(meta["shards"])
        pairs = records.read_pairs_by_residue(path, modulus=batch_size, residues=rows, meta=meta)
        for r, where, rec in pairs:
            ex = _pair_example(rec, where, objective)
            side = held if eval_fraction > 0 and in_split(ex.prompt_id, "eval", eval_fraction) else train
            side[r % batch_size].append((r, ex))
        lengths = meta.get("shard_lengths", [])
        opened = [shards[f] for f in records.files_for_residues(lengths, batch_size, rows)]
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read preference records: {e}") from None
    in_order = lambda d: {j: [ex for _, ex in sorted(v, key=lambda t: t[0])] for j, v in d.items()}
    return RowExamples(in_order(train), in_order(held), n, len(shards), opened)


def read_pair_examples(path: str, *, shard_index: int = 0, shard_count: int = 1, split: str = "all",
                       eval_fraction: float = 0.0, objective: str = "dpo") -> list[Example]:
    """This host's shard of a preference-record directory (local or gs://, GZIP or not)."""
    from lr_jax.io import records  # no JAX in lr_jax.io; imported lazily so packing tests need no TF

    try:
        recs: Iterator[dict[str, Any]] = records.read_pairs(path, shard_index=shard_index,
                                                            shard_count=shard_count)
        return examples_from_pairs(recs, source=path, split=split, eval_fraction=eval_fraction,
                                   objective=objective)
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read preference records: {e}") from None


def parse_prompts_jsonl(text: str, *, source: str, shard_index: int = 0, shard_count: int = 1,
                        split: str = "all", eval_fraction: float = 0.0) -> list[Example]:
    """SFT items from prompts JSONL (`id`, `context`, `query`, `answer`); line k goes to host k % count."""
    out = []
    for lineno, rec in jsonl.parse_lines(jsonl.split_lines(text), source=source, error=DataError):
        where = f"{source}: line {lineno}"
        if "answer" not in rec and {"response", "prompt_id"} <= set(rec):
            kind = "judge.score output (scored rows)" if "scores" in rec else "lr_jax.sample output (samples)"
            raise DataError(f"{where}: this looks like {kind}, not SFT prompts (id, context, query, answer): "
                            "to train DPO on judged responses, build pairs with `python -m judge.pairs "
                            "--scored ... --out DIR` and set data.path=DIR")
        pid = _id_field(rec, "id", where)
        where = f"{where} (id={pid})"
        context, query = _text_field(rec, "context", where), _text_field(rec, "query", where)
        answer = _text_field(rec, "answer", where)
        if (lineno - 1) % shard_count != shard_index or not in_split(pid, split, eval_fraction):
            continue
        out.append(Example(pid, context, query, (answer,), where))
    return out


def read_prompt_examples(path: str, *, shard_index: int = 0, shard_count: int = 1, split: str = "all",
                         eval_fraction: float = 0.0) -> list[Example]:
    """This host's share of a prompts JSONL file (local or gs://) for SFT."""
    from lr_jax.io import storage

    try:
        text = storage.read_text(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read prompts file: {e}") from None
    return parse_prompts_jsonl(text, source=path, shard_index=shard_index, shard_count=shard_count,
                               split=split, eval_fraction=eval_fraction)
