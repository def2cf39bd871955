"""A checkpoint's answers to LongBench / LongBench-Chat (Predictions JSONL): `run(PredictOptions(...))`, the
library behind ``python -m lr_jax.eval predict`` (the CLI is `lr_jax.eval.__main__`).

    python -m lr_jax.eval predict --model DIR --benchmark longbench --data LongBench/data --out runs/sft \\
        [--tasks narrativeqa,qasper] [--limit N] [--prompt-style longbench|longreward] \\
        [--max-input-tokens N] [--temperature 0] [--seed 0] [--batch-size 1] [--mesh DATA,FSDP,TENSOR]
    python -m lr_jax.eval predict --model DIR --benchmark longbench_chat --data test_cases.json --out runs/sft

Decoding is `lr_jax.sample`'s (`Policy`: the same model loading, mesh sharding, EOS ids and
`lr_jax.model.decode.generate`); greedy unless ``--temperature`` > 0 (then the key of an item is
``(seed, "<task>/<id>")``, independent of batching). Prompts are each benchmark's own
(`lr_jax.eval.benchmarks.build_prompt`). An input longer than the budget loses the middle of its token
sequence, keeping the first and last halves (``half = budget // 2`` tokens each, as LongBench's ``pred.py``;
the chat template around it is never cut). The budget is ``--max-input-tokens`` (LongBench's "max_length",
LongReward used 64000), capped at ``max_position_embeddings - max_new_tokens - template tokens``.

Output: ``OUT/<task>.jsonl`` per task, appended and fsynced after every batch; a re-run skips the ids already
written (cutting a torn last line from a kill first), so nothing done is generated twice. A row written with
other sampler settings (model name, temperature, top-p, seed, prompt style, budget) is an error.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lr_jax.data.packing import truncate_middle
from lr_jax.data.tokenization import EncodedPrompt
from lr_jax.eval.benchmarks import (
    JUDGED_LONGBENCH_TASKS,
    LONGBENCH,
    LONGBENCH_CHAT,
    LONGBENCH_TASKS,
    PROMPT_STYLES,
    EvalInputError,
    Item,
    base_task,
    build_prompt,
    longbench_file,
    predictions_file,
    read_longbench,
    read_longbench_chat,
)
from lr_jax.io import storage
from lr_jax.io.outputs import check_output_dir, check_output_file
from lr_jax.options import option, validate
from lr_jax.sample import MAX_INT32, MAX_SEED, MIN_TEMPERATURE, Policy, append_fsync, recover_output


@dataclass(frozen=True)
class PredictOptions:
    """What `run` is asked to do: the flags of ``python -m lr_jax.eval predict`` (`lr_jax.options`: the flags,
    ``--help`` and the checks come from these fields). Checked when built: a bad value is an
    `EvalInputError` naming the field and its flag, before anything is read or loaded."""

    model: str = option(help="lr_jax dir (model_config.json), HF dir (config.json) or a .gguf file")
    benchmark: str = option(choices=(LONGBENCH, LONGBENCH_CHAT), help="which benchmark --data holds")
    data: str = option(help="LongBench: dir of <task>.jsonl (or one .jsonl with --tasks); LongBench-Chat: "
                            "the JSON list file. Local or gs://")
    out: str = option(help="local output dir: <task>.jsonl per task (resumed)")
    tasks: str | None = option(None, help="comma-separated LongBench tasks (default: all present; "
                                          "--prompt-style longreward: the 12 judged tasks)")
    limit: int | None = option(None, ge=1, le=MAX_INT32, help="first N items per task")
    prompt_style: str = option("longbench", choices=PROMPT_STYLES,
                               help="longbench: the benchmark's templates + max new tokens; longreward: the "
                                    "LongReward paper's eval prompts, 1024 new tokens")
    # >= 2: the kept input is budget // 2 tokens from each end
    max_input_tokens: int | None = option(None, ge=2, le=MAX_INT32,
                                          help="middle-truncate the input to this many tokens (default: "
                                               "what the model fits)")
    max_new_tokens: int | None = option(None, ge=1, le=MAX_INT32, help="override the per-task value")
    temperature: float = option(0.0, ge=0, help=f"0 = greedy, else >= {MIN_TEMPERATURE:g}")
    top_p: float = option(1.0, gt=0, le=1, help="nucleus sampling mass, in (0, 1]")
    seed: int = option(0, ge=0, le=MAX_SEED, help="sampling seed (32-bit)")
    batch_size: int = option(1, ge=1, le=MAX_INT32, help="items per prefill")
    pad_to: int = option(256, ge=1, le=MAX_INT32, help="round prompt length up (fewer recompilations)")
    mesh: str | None = option(None, help="DATA,FSDP,TENSOR as for lr_jax.sample")
    tokenizer: str | None = option(None, help="tokenizer dir (default MODEL/tokenizer, else MODEL)")
    model_name: str | None = option(None, help="name recorded in sampler.model (default: dir name)")
    dtype: str | None = option(None, choices=("float32", "bfloat16"), help="compute dtype")
    no_progress: bool = option(False, help="no progress bar")

    def __post_init__(self) -> None:
        validate(self, EvalInputError)
        if 0 < self.temperature < MIN_TEMPERATURE:  # as lr_jax.sample: past float32 once logits / T
            raise EvalInputError(f"temperature (--temperature) must be 0 (greedy) or >= {MIN_TEMPERATURE:g}, "
                                 f"got {self.temperature!r}")


@dataclass
class TaskStats:
    items: int = 0
    already_done: int = 0
    written: int = 0
    truncated: int = 0
    truncated_tokens: int = 0
    skipped_too_long: list[str] = field(default_factory=list)
    torn_bytes_dropped: int = 0


def encode_raw(tok: Any, text: str) -> EncodedPrompt:
    """`text` tokenized as plain text (with the tokenizer's special tokens, e.g. BOS), all of it removable:
    LongBench feeds trec, triviaqa, samsum, lsht, lcc and repobench-p without a chat template."""
    import numpy as np

    enc = tok.tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    inside = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a]
    span = (inside[0], inside[-1] + 1) if inside else (0, 0)
    return EncodedPrompt(ids=np.asarray(enc["input_ids"], np.int32), context_span=span)


def encode_item(tok: Any, item: Item, style: str, budget: int | None, max_positions: int,
                max_new_tokens: int) -> tuple[list[int] | None, int]:
    """(prompt ids, tokens cut) for `item`; ids None when even the template does not fit.

    The benchmark input (the filled template) keeps its first and last ``half`` tokens when it has more than
    ``2 * half``, ``half = budget // 2``.
    """
    prompt = build_prompt(item, style)
    enc = tok.encode_user_turn(prompt.content) if prompt.chat else encode_raw(tok, prompt.content)
    ids = enc.ids
    start, end = enc.context_span
    overhead = len(ids) - (end - start)
    cap = max_positions - max_new_tokens - overhead
    limit = cap if budget is None else min(budget, cap)
    if limit < 2:
        return None, 0
    if end - start > limit:
        half = limit // 2
        cut = (end - start) - 2 * half
        ids = truncate_middle(ids, enc.context_span, cut)
        return [int(i) for i in ids], cut
    if len(ids) + max_new_tokens > max_positions:
        return None, 0  # no cuttable input span found (a template that rewrote the text) and too long
    return [int(i) for i in ids], 0


def _tasks(args: PredictOptions) -> list[str]:
    if args.benchmark == LONGBENCH_CHAT:
        if args.tasks and args.tasks != LONGBENCH_CHAT:
            raise EvalInputError("--tasks does not apply to --benchmark longbench_chat")
        return [LONGBENCH_CHAT]
    if args.tasks is not None:
        # a task named twice would be generated twice into the same file
        tasks = list(dict.fromkeys(t.strip() for t in args.tasks.split(",") if t.strip()))
        if not tasks:
            raise EvalInputError(f"--tasks {args.tasks!r}: names no task")
        if args.data.endswith(".jsonl") and len(tasks) > 1:
            raise EvalInputError(f"--data {args.data} is one task's file: name one task with --tasks")
        for t in tasks:
            if base_task(t) not in LONGBENCH_TASKS:
                raise EvalInputError(f"--tasks: unknown LongBench task {t!r} "
                                     f"(known: {', '.join(LONGBENCH_TASKS)})")
        return tasks
    wanted = JUDGED_LONGBENCH_TASKS if args.prompt_style == "longreward" else LONGBENCH_TASKS
    if args.data.endswith(".jsonl"):
        raise EvalInputError("--data is one .jsonl file: name its task with --tasks")
    if not storage.exists(args.data):
        raise EvalInputError(f"--data {args.data}: does not exist")
    present = [t for t in wanted if storage.exists(longbench_file(args.data, t))]
    if not present:
        raise EvalInputError(f"{args.data}: no LongBench task file (<task>.jsonl) found")
    return present


def _input_file(args: PredictOptions, task: str) -> str:
    return args.data if task == LONGBENCH_CHAT else longbench_file(args.data, task)


def _items(args: PredictOptions, task: str) -> list[Item]:
    path = _input_file(args, task)
    if args.benchmark == LONGBENCH_CHAT:
        items = read_longbench_chat(path, args.limit)
    elif not storage.exists(path):
        raise EvalInputError(f"{path}: file not found (task {task!r})")
    else:
        items = read_longbench(path, task, args.limit)
    if not items:  # a run that writes nothing and exits 0 looks like success
        raise EvalInputError(f"{path}: no items (an empty {'list' if task == LONGBENCH_CHAT else 'file'})")
    return items


def run(args: PredictOptions) -> dict[str, Any]:
    """Write the predictions `args` asks for (see the module docstring); returns the per-task summary."""
    from tqdm import tqdm

    from lr_jax.model.decode import row_key

    # rows are appended and fsynced: a local directory (copy it to gs:// afterwards)
    check_output_dir(args.out, "--out", local_only=True, error=EvalInputError)
    style = args.prompt_style if args.benchmark == LONGBENCH else LONGBENCH_CHAT
    sampler = {"model": args.model_name or os.path.basename(os.path.normpath(args.model)),
               "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
               "prompt_style": style, "max_input_tokens": args.max_input_tokens}
    tasks = _tasks(args)
    work: list[tuple[str, list[Item], Path, TaskStats]] = []
    stats: dict[str, TaskStats] = {}
    out_dir = Path(args.out)
    for task in tasks:  # read and check every input before loading the model: bad input costs nothing
        items = _items(args, task)
        path = Path(predictions_file(str(out_dir), task))
        # a directory in its place, or the benchmark file itself (--out = the LongBench dir)
        check_output_file(str(path), "--out", local_only=True, inputs={"--data": _input_file(args, task)},
                          error=EvalInputError)
        st = stats[task] = TaskStats(items=len(items))
        done, st.torn_bytes_dropped = recover_output(path, sampler)
        if st.torn_bytes_dropped:
            print(f"lr_jax.eval: dropped a torn last line ({st.torn_bytes_dropped} bytes) from {path}",
                  file=sys.stderr)
        todo = [it for it in items if it.id not in done]
        st.already_done = len(items) - len(todo)
        if todo:
            work.append((task, todo, path, st))
    total = sum(s.items for s in stats.values())
    if work:
        policy = Policy.load(args.model, tokenizer=args.tokenizer, dtype=args.dtype, mesh=args.mesh)
        batch_size = policy.round_batch(args.batch_size)
        out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=total, initial=sum(s.already_done for s in stats.values()), desc="predict",
                   unit="item", dynamic_ncols=True, file=sys.stderr, disable=args.no_progress)
        for task, todo, path, st in work:
            bar.set_postfix_str(task, refresh=False)
            for i in range(0, len(todo), batch_size):
                batch = todo[i:i + batch_size]
                live, lines = [], []
                for it in batch:
                    max_new = args.max_new_tokens or build_prompt(it, style).max_new_tokens
                    ids, cut = encode_item(policy.tok, it, style, args.max_input_tokens,
                                           policy.cfg.max_position_embeddings, max_new)
                    if ids is None:
                        st.skipped_too_long.append(it.id)
                        continue
                    policy.check_vocab(ids, f"{_input_file(args, task)}: item {it.id!r}")
                    st.truncated += bool(cut)
                    st.truncated_tokens += cut
                    live.append((it, ids, cut, max_new))
                # One max_new_tokens per batch: items of a task share it (LongBench: per task).
                if live:
                    outs = policy.complete(
                        [ids for _, ids, _, _ in live],
                        [row_key(args.seed, f"{task}/{it.id}", 0) for it, _, _, _ in live],
                        num_samples=1, max_new_tokens=max(m for *_, m in live),
                        temperature=args.temperature, top_p=args.top_p, pad_to=args.pad_to)
                    for (it, ids, cut, _), (c,) in zip(live, outs, strict=True):
                        row = {"id": it.id, "task": task, "benchmark": it.benchmark, "query": it.query,
                               "answers": it.answers, "all_classes": it.all_classes, "length": it.length,
                               "language": it.language, "prediction": c.text,
                               "finish_reason": "stop" if c.finished else "length",
                               "num_tokens": c.num_tokens, "prompt_tokens": len(ids), "truncated_tokens": cut,
                               "prompt_style": style, "sampler": sampler}
                        # allow_nan=False: a NaN would make the line invalid JSON for every reader
                        lines.append(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
                    append_fsync(path, lines)
                    st.written += len(lines)
                bar.update(len(batch))
        bar.close()
    for task, st in stats.items():
        if st.skipped_too_long:
            print(f"lr_jax.eval: {task}: skipped {len(st.skipped_too_long)} item(s) whose template alone "
                  f"does not fit the model: {st.skipped_too_long[:10]}", file=sys.stderr)
    return {"out": str(out_dir), "tasks": {t: asdict(s) for t, s in stats.items()}}
