"""Pure-NumPy packing of tokenized pairs (DPO) and examples (SFT) into fixed `[batch, seq]` rows.

Shared-prefix layout of one pair (prompt ``p`` of length L, responses ``c``, ``r``)::

    tokens     p0 .. p[L-2] | p[L-1] c0 .. c[-1]      | p[L-1] r0 .. r[-1]
    positions  0  .. L-2    | L-1    L  .. L-1+|c|    | L-1    L  .. L-1+|r|
    branch_ids 0  .. 0      | 1      1  .. 1          | 2      2  .. 2
    targets    p1 .. p[L-1] | c0     c1 .. pad        | r0     r1 .. pad
    loss_mask  0  .. 0      | 1      1  .. 0          | 1      1  .. 0

The last prompt token is duplicated at the start of each branch so each branch predicts its own first
token; positions restart at L-1 in each branch, so with the mask rule of
`lr_jax.model.attention.mask` (same segment, ``pos_k <= pos_q``, key branch 0 or the query's branch)
every response token sees exactly what it would see in the plain sequence ``p + response``: log-probs are
identical to `pair_to_separate_sequences`. A segment takes ``L - 1 + sum(1 + |response|)`` tokens.
SFT is the same layout with one branch (the answer, branch 1).

Several segments are packed into one row (segment ids 1..P, next-fit in stream order so a data cursor
is enough to resume); the rest of the row is padding (segment 0, loss_mask 0, target = pad id).

Over-long prompts lose tokens from the middle of the context (head and tail kept; template, query and
responses never cut). Items that cannot fit, or have an empty response, are skipped with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lr_jax.data.batch import TOKEN_FIELDS
from lr_jax.data.errors import DataError


@dataclass(frozen=True)
class PackingConfig:
    """How items become rows.

    Attributes:
      seq_len: row length S.
      max_pairs_per_row: P, most segments per row (1 = one pair per row).
      max_prompt_len: 0 = no limit beyond the row; else prompts longer than this are middle-truncated.
      max_response_len: 0 = no limit; else items with a longer response are skipped.
      pad_id: token id used for padding tokens and masked targets (must be a valid vocabulary index).
    """

    seq_len: int
    max_pairs_per_row: int = 1
    max_prompt_len: int = 0
    max_response_len: int = 0
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise DataError(f"packing: seq_len must be >= 2, got {self.seq_len}")
        if self.max_pairs_per_row < 1:
            raise DataError(f"packing: max_pairs_per_row must be >= 1, got {self.max_pairs_per_row}")
        if self.max_prompt_len < 0 or self.max_response_len < 0:
            raise DataError("packing: max_prompt_len / max_response_len must be >= 0")


@dataclass(frozen=True)
class Segment:
    """One laid-out item; every array `[n]` int32 where n = `len(tokens)`."""

    tokens: np.ndarray
    targets: np.ndarray
    loss_mask: np.ndarray
    positions: np.ndarray
    branch_ids: np.ndarray
    prompt: np.ndarray  # `[L]` the (possibly truncated) prompt ids
    responses: tuple[np.ndarray, ...]  # each `[|r|]`
    example_id: int
    truncated_tokens: int

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class Skip:
    """Why an item was not packed (a reason from `lr_jax.data.stats.SKIP_REASONS`)."""

    reason: str


def segment_length(prompt_len: int, response_lens: Sequence[int]) -> int:
    """Tokens one item occupies: ``L - 1 + sum(1 + |r|)``."""
    return prompt_len - 1 + sum(1 + n for n in response_lens)


def truncate_middle(ids: np.ndarray, span: tuple[int, int], n_remove: int) -> np.ndarray:
    """Remove `n_remove` tokens from the middle of `ids[span[0]:span[1]]` (head and tail of it kept).

    Args:
      ids: `[L]` prompt ids. span: removable token range (the context). n_remove: 0..span length.
    Returns:
      `[L - n_remove]` ids.
    """
    start, end = span
    if n_remove <= 0:
        return ids
    if n_remove > end - start:
        raise DataError(f"truncate_middle: cannot remove {n_remove} tokens from a span of {end - start}")
    keep = (end - start) - n_remove
    head = keep - keep // 2  # the head gets the odd token: documents front-load their titles
    cut0 = start + head
    return np.concatenate([ids[:cut0], ids[cut0 + n_remove:]])


def layout(prompt: np.ndarray, responses: Sequence[np.ndarray], *, pad_id: int, example_id: int = -1,
           truncated_tokens: int = 0) -> Segment:
    """Lay one prompt with its responses (branches 1..R) out in the shared-prefix format."""
    prompt = np.asarray(prompt, np.int32)
    L = int(prompt.shape[0])
    if L < 1:
        raise DataError("layout: empty prompt")
    parts_tok = [prompt[:-1]]
    parts_tgt = [prompt[1:]]
    parts_mask = [np.zeros(L - 1, np.int32)]
    parts_pos = [np.arange(L - 1, dtype=np.int32)]
    parts_br = [np.zeros(L - 1, np.int32)]
    for b, r in enumerate(responses, start=1):
        r = np.asarray(r, np.int32)
        n = int(r.shape[0])
        parts_tok.append(np.concatenate([prompt[-1:], r]))
        parts_tgt.append(np.concatenate([r, np.asarray([pad_id], np.int32)]))
        parts_mask.append(np.concatenate([np.ones(n, np.int32), np.zeros(1, np.int32)]))
        parts_pos.append(np.arange(L - 1, L + n, dtype=np.int32))
        parts_br.append(np.full(n + 1, b, np.int32))
    cat = lambda xs: np.concatenate(xs).astype(np.int32)
    return Segment(cat(parts_tok), cat(parts_tgt), cat(parts_mask), cat(parts_pos), cat(parts_br),
                   prompt, tuple(np.asarray(r, np.int32) for r in responses), example_id, truncated_tokens)


def prepare(prompt: np.ndarray, context_span: tuple[int, int], responses: Sequence[np.ndarray],
            cfg: PackingConfig, *, example_id: int = -1) -> Segment | Skip:
    """Validate, middle-truncate the context if needed, and lay out one item (a pair or an SFT example)."""
    prompt = np.asarray(prompt, np.int32)
    lens = [int(np.asarray(r).shape[0]) for r in responses]
    if any(n == 0 for n in lens):
        return Skip("empty_response")
    if prompt.shape[0] == 0:
        return Skip("empty_prompt")
    if cfg.max_response_len and max(lens) > cfg.max_response_len:
        return Skip("response_too_long")
    budget = cfg.seq_len + 1 - sum(1 + n for n in lens)  # most prompt tokens the row leaves
    if cfg.max_prompt_len:
        budget = min(budget, cfg.max_prompt_len)
    n_remove = max(0, int(prompt.shape[0]) - budget)
    if budget < 1 or n_remove > context_span[1] - context_span[0]:
        return Skip("does_not_fit")
    if n_remove:
        prompt = truncate_middle(prompt, context_span, n_remove)
    return layout(prompt, responses, pad_id=cfg.pad_id, example_id=example_id, truncated_tokens=n_remove)


class RowBuilder:
    """Accumulates segments into one `[seq_len]` row (next-fit)."""

    def __init__(self, cfg: PackingConfig) -> None:
        self.cfg = cfg
        S, P = cfg.seq_len, cfg.max_pairs_per_row
        self.arrays = {k: np.zeros(S, np.int32) for k in TOKEN_FIELDS}
        self.arrays["tokens"][:] = cfg.pad_id
        self.arrays["targets"][:] = cfg.pad_id
        self.example_ids = np.full(P, -1, np.int32)
        self.used = 0
        self.count = 0

    def fits(self, seg: Segment) -> bool:
        return self.count < self.cfg.max_pairs_per_row and self.used + len(seg) <= self.cfg.seq_len

    def add(self, seg: Segment) -> None:
        if not self.fits(seg):
            raise DataError(f"RowBuilder: segment of {len(seg)} tokens does not fit")
        a, b = self.used, self.used + len(seg)
        for key in ("tokens", "targets", "loss_mask", "positions", "branch_ids"):
            self.arrays[key][a:b] = getattr(seg, key)
        self.arrays["segment_ids"][a:b] = self.count + 1
        self.example_ids[self.count] = seg.example_id
        self.used = b
        self.count += 1

    @property
    def empty(self) -> bool:
        return self.count == 0


def stack_rows(rows: Sequence[RowBuilder], batch_rows: int, cfg: PackingConfig) -> dict[str, np.ndarray]:
    """Batch dict: the `TOKEN_FIELDS` as `[batch, seq]` int32, `pair_valid` and `example_ids` as `[batch, P]`.

    Fewer than `batch_rows` rows are padded with empty rows (segment 0 everywhere, pair_valid 0).
    """
    if len(rows) > batch_rows:
        raise DataError(f"stack_rows: {len(rows)} rows for a batch of {batch_rows}")
    rows = list(rows) + [RowBuilder(cfg) for _ in range(batch_rows - len(rows))]
    out = {k: np.stack([r.arrays[k] for r in rows]) for k in TOKEN_FIELDS}
    out["example_ids"] = np.stack([r.example_ids for r in rows])
    out["pair_valid"] = (out["example_ids"] >= 0).astype(np.int32)
    return out


def pack(segments: Sequence[Segment], cfg: PackingConfig) -> list[RowBuilder]:
    """Next-fit packing of `segments` in order (a segment longer than a row is an error)."""
    rows: list[RowBuilder] = []
    row = RowBuilder(cfg)
    for seg in segments:
        if len(seg) > cfg.seq_len:
            raise DataError(f"pack: segment of {len(seg)} tokens exceeds seq_len {cfg.seq_len}")
        if not row.fits(seg):
            rows.append(row)
            row = RowBuilder(cfg)
        row.add(seg)
    if not row.empty:
        rows.append(row)
    return rows


def pair_to_separate_sequences(prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, *, pad_id: int,
                               seq_len: int | None = None) -> dict[str, np.ndarray]:
    """The two plain sequences ``prompt + chosen`` (row 0) and ``prompt + rejected`` (row 1) as a batch.

    Same contract as packed batches (`[2, seq]`), one segment per row; response positions carry branch 1
    (row 0) / 2 (row 1) so per-branch sums read chosen from row 0 and rejected from row 1, and since each
    row holds one branch the mask rule reduces to plain causal attention. Summed masked log-probs equal
    those of the packed shared-prefix row built from the same ids (the reference for the equality test).
    """
    seqs = []
    for b, r in ((1, chosen), (2, rejected)):
        p, r = np.asarray(prompt, np.int32), np.asarray(r, np.int32)
        L, n = p.shape[0], r.shape[0]
        toks = np.concatenate([p, r])
        seqs.append(dict(
            tokens=toks,
            targets=np.concatenate([toks[1:], [pad_id]]).astype(np.int32),
            loss_mask=np.concatenate([np.zeros(L - 1), np.ones(n), np.zeros(1)]).astype(np.int32),
            positions=np.arange(L + n, dtype=np.int32),
            segment_ids=np.ones(L + n, np.int32),
            branch_ids=np.concatenate([np.zeros(L - 1), np.full(n + 1, b)]).astype(np.int32),
        ))
    S = seq_len or max(s["tokens"].shape[0] for s in seqs)
    out = {}
    for k in TOKEN_FIELDS:
        fill = pad_id if k in ("tokens", "targets") else 0
        arr = np.full((2, S), fill, np.int32)
        for i, s in enumerate(seqs):
            if s[k].shape[0] > S:
                raise DataError(f"pair_to_separate_sequences: sequence of {s[k].shape[0]} > seq_len {S}")
            arr[i, : s[k].shape[0]] = s[k]
        out[k] = arr
    out["example_ids"] = np.zeros((2, 1), np.int32)
    out["pair_valid"] = np.ones((2, 1), np.int32)
    return out
