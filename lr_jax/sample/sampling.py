"""`run`: sample every missing row of a Prompts file into a Samples file (resumable, one decoding path)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lr_jax.data.packing import truncate_middle
from lr_jax.sample.files import append_fsync, check_output_file, pending
from lr_jax.sample.options import SampleError, SampleOptions, validate_options
from lr_jax.sample.policy import Policy

if TYPE_CHECKING:
    from lr_jax.sample.engine import EngineStats


@dataclass
class Stats:
    """What happened to the prompts (printed as JSON at the end)."""

    prompts: int = 0
    already_done: int = 0
    sampled_prompts: int = 0
    rows_written: int = 0
    truncated_prompts: int = 0
    truncated_tokens: int = 0
    skipped_too_long: list[str] = field(default_factory=list)
    torn_bytes_dropped: int = 0


def encode(tok: Any, prompt: dict[str, Any], limit: int, stats: Stats) -> list[int] | None:
    """Prompt ids after middle-truncating the context to `limit` tokens; None (counted) if it cannot fit."""
    enc = tok.encode_prompt(prompt["context"], prompt["query"])
    ids = enc.ids
    excess = len(ids) - limit
    if excess > 0:
        start, end = enc.context_span
        if excess > end - start:
            stats.skipped_too_long.append(prompt["id"])
            return None
        ids = truncate_middle(ids, enc.context_span, excess)
        stats.truncated_prompts += 1
        stats.truncated_tokens += excess
    return [int(i) for i in ids]


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def prompt_limit(max_prompt_tokens: int, max_new_tokens: int, cfg: Any, model: str) -> int:
    """Prompt tokens kept (`--max-prompt-tokens`, default what the model's positions leave)."""
    limit = max_prompt_tokens or (cfg.max_position_embeddings - max_new_tokens)
    if limit < 1:
        raise SampleError(f"--max-prompt-tokens resolves to {limit}: lower --max-new-tokens or set it")
    if limit + max_new_tokens > cfg.max_position_embeddings:
        # Positions past the model's range would decode silently (RoPE extrapolates) into garbage.
        raise SampleError(f"--max-prompt-tokens {limit} + --max-new-tokens {max_new_tokens} exceed the "
                          f"model's max_position_embeddings {cfg.max_position_embeddings} ({model})")
    return limit


def run(args: SampleOptions) -> Stats | EngineStats:
    """Sample every missing row of `args.prompts` into `args.out`; `Stats` (`EngineStats` with --engine
    openai).

    Every check that needs no weights (options, output path, prompts, model config, mesh, tokenizer,
    prompt-length limits) runs before the weights are loaded, so a bad input fails in seconds, not after
    minutes of loading or sampling.
    """
    validate_options(args)  # a SampleOptions is checked when made; again here, cheaply, for a replace()d one
    if args.engine == "openai":  # an inference engine decodes (lr_jax.sample.engine); nothing loads here
        from lr_jax.sample.engine import run_engine

        return run_engine(args)
    out = check_output_file(args.out, args.prompts)

    from lr_jax.model.decode import row_key

    sampler = {"model": args.model_name or os.path.basename(os.path.normpath(args.model)),
               "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    if args.top_k:
        sampler["top_k"] = args.top_k
    stats = Stats()
    todo = pending(args, out, sampler, stats)
    if not todo:
        return stats

    check = lambda cfg: prompt_limit(args.max_prompt_tokens, args.max_new_tokens, cfg, args.model)
    policy = Policy.load(args.model, tokenizer=args.tokenizer, dtype=args.dtype, mesh=args.mesh,
                         before_weights=check)
    batch_size = policy.round_batch(args.batch_size)
    limit = check(policy.cfg)
    out.parent.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    bar = tqdm(total=stats.prompts, initial=stats.already_done, desc="sample", unit="prompt",
               dynamic_ncols=True, file=sys.stderr, disable=args.no_progress)
    N = args.num_samples
    for batch in _batches(todo, batch_size):
        encoded = [(p, missing, encode(policy.tok, p, limit, stats)) for p, missing in batch]
        for p, _, ids in encoded:
            if ids is not None:
                policy.check_vocab(ids, f"{args.prompts}: prompt id {p['id']!r}")
        live = [(p, missing, ids) for p, missing, ids in encoded if ids is not None]
        if live:
            keys = [row_key(args.seed, p["id"], k) for p, _, _ in live for k in range(N)]
            outs = policy.complete([ids for _, _, ids in live], keys, num_samples=N,
                                   max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                   top_k=args.top_k, top_p=args.top_p, pad_to=args.pad_to,
                                   logprobs=args.logprobs)
            lines = []
            for (p, missing, _), rows in zip(live, outs, strict=True):
                for k in missing:
                    c = rows[k]
                    row = {"id": f"{p['id']}-{k}", "prompt_id": p["id"], "query": p["query"],
                           "response": c.text,
                           "sampler": sampler, "finish_reason": "stop" if c.finished else "length",
                           "num_tokens": c.num_tokens}
                    if c.logprobs is not None:  # the ending EOS included: len = num_tokens + (stop)
                        row["token_ids"], row["logprobs"] = list(c.token_ids), list(c.logprobs)
                    # allow_nan=False: a NaN / Infinity would make the line unreadable JSON for judge.score.
                    lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
            append_fsync(out, lines)
            stats.rows_written += len(lines)
            stats.sampled_prompts += len(live)
        bar.update(len(batch))
    bar.close()
    if stats.skipped_too_long:
        print(f"lr_jax.sample: skipped {len(stats.skipped_too_long)} prompt(s) whose template + query exceed "
              f"{limit} tokens: {stats.skipped_too_long[:10]}", file=sys.stderr)
    return stats
