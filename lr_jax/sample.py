"""`python -m lr_jax.sample` — N responses per prompt from a local checkpoint, written as Samples JSONL.

    python -m lr_jax.sample --model MODEL_DIR --prompts prompts.jsonl --out samples.jsonl \\
        [--num-samples 10] [--temperature 1.0] [--top-p 1.0] [--top-k 0] [--max-new-tokens 1024] \\
        [--max-prompt-tokens N] [--batch-size 1] [--seed 0] [--tokenizer DIR] [--dtype bfloat16] \\
        [--mesh DATA,FSDP,TENSOR]

MODEL_DIR is an lr_jax dir (`model_config.json` + `params/`, as `lr_jax.convert hf2flax` or training writes)
or an HF dir (`config.json` + safetensors). The tokenizer comes from `--tokenizer`, else
`MODEL_DIR/tokenizer`, else MODEL_DIR. The policy prompt is one user turn ``context + "\\n\\n" + query``
through the tokenizer's chat template (`lr_jax.data.tokenization`); a prompt longer than
`--max-prompt-tokens` loses tokens from the middle of its context (never the template or the query); one
that still does not fit is skipped and counted.

`--batch-size` is prompts per prefill; each prompt is prefilled once and its `--num-samples` rows share that
KV prefix (`lr_jax.model.decode`). Rows are appended and fsynced after every batch; a re-run skips the ids
already in `--out` (a torn last line from a kill is cut first) and, because sample k of a prompt always uses
the key (seed, prompt id, k), regenerates missing samples exactly.

Decoding lives in `Policy` (model + tokenizer + EOS ids + mesh, `Policy.complete`): the one decoding path,
shared with `python -m lr_jax.eval predict`.

`--mesh DATA,FSDP,TENSOR` (default: every local device on DATA; one axis may be -1 = the devices the others
leave; `1,1,1` = one device, no mesh) shards the run like training: params with the trainer's
`param_shardings` (FSDP / tensor), prompts with their rows and KV caches over data x fsdp, KV heads over
tensor. `--batch-size` is rounded up to a multiple of data x fsdp and a short last batch is padded with
dummy prompts whose rows finish at once and are not written; the file is byte-identical to a one-device
run.

Bad input is one ``error:`` line and exit status 2 (`lr_jax.errors.exit_code`), raised before the work it
would spoil: options (finite, in range; seeds are 32-bit) before any file is read, the `--out` path before
anything else, and the model config, mesh, tokenizer and length limits before the weights load. An `--out`
that is not a Samples file is reported, never cut.
"""

from __future__ import annotations

import argparse
import codecs
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lr_jax.data.errors import DataError
from lr_jax.data.packing import truncate_middle
from lr_jax.errors import LrJaxError, exit_code
from lr_jax.io import jsonl


class SampleError(LrJaxError, ValueError):
    """Bad input or output file for sampling; the message names the file, line and field."""


def _one_line(message: str) -> str:
    """A library's multi-line message (transformers' tokenizer errors) folded onto the one error line."""
    return " ".join(message.split())


# ----------------------------------------------------------------------------------------------- options

# Below this a temperature pushes |logits| / T past the -1e30 that top-k / top-p write over excluded tokens
# (or past float32), so excluded tokens would be sampled; 0 (greedy) is the way to ask for "no randomness".
MIN_TEMPERATURE = 1e-6
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: seed 2**32 would silently repeat seed 0
MAX_INT32 = 2**31 - 1  # rows, positions and token counts are int32 on the device


def validate_args(args: argparse.Namespace) -> None:
    """Every numeric option finite and in range; called before anything is read or loaded.

    Only what needs no file is checked here; limits that depend on the model (max_position_embeddings,
    num_heads) are checked from its config before the weights are loaded (`run`).
    """
    def need(ok: bool, flag: str, value: Any, want: str) -> None:
        if not ok:
            raise SampleError(f"--{flag} {value!r}: must be {want}")

    t, p = args.temperature, args.top_p
    need(math.isfinite(t) and (t == 0 or t >= MIN_TEMPERATURE), "temperature", t,
         f"0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}")
    need(math.isfinite(p) and 0 < p <= 1, "top-p", p, "a number in (0, 1]")
    need(0 <= args.top_k <= MAX_INT32, "top-k", args.top_k, "an int >= 0 (0 = off)")
    for flag, lo in (("num-samples", 1), ("max-new-tokens", 1), ("batch-size", 1), ("pad-to", 1),
                     ("max-prompt-tokens", 0)):
        v = getattr(args, flag.replace("-", "_"))
        need(lo <= v <= MAX_INT32, flag, v, f"an int in [{lo}, {MAX_INT32}]"
             + (" (0 = max_position_embeddings - max_new_tokens)" if lo == 0 else ""))
    rows = args.num_samples * args.batch_size
    need(rows <= MAX_INT32, "num-samples", args.num_samples,
         f"such that --num-samples x --batch-size ({rows} rows per batch) <= {MAX_INT32}")
    need(0 <= args.seed <= MAX_SEED, "seed", args.seed, f"an int in [0, {MAX_SEED}] (seeds are 32-bit)")


def check_output_file(path: str, prompts: str) -> Path:
    """`--out` as a Path: a local file we can append to (or create), not the prompts file; checked first."""
    from lr_jax.convert import ConvertError, check_output_dir

    if "://" in path:
        # Path() would fold "gs://b/x" into the local relative path "gs:/b/x" and write there silently.
        raise SampleError(f"--out {path}: must be a local path (URLs such as gs:// are not supported)")
    out = Path(path)
    if out.is_dir():
        raise SampleError(f"--out {out}: is a directory, not a Samples JSONL file")
    if out.exists() and os.path.exists(prompts) and os.path.samefile(out, prompts):
        raise SampleError(f"--out {out}: is the --prompts file; write the samples to a new file")
    if out.exists():
        try:
            with open(out, "ab"):  # opening for append changes nothing but proves the write will work
                pass
        except OSError as e:
            raise SampleError(f"--out {out}: not writable ({e.strerror or e})") from None
        return out
    try:
        check_output_dir(out.parent, flag=f"--out {out}: directory")
    except ConvertError as e:
        raise SampleError(str(e)) from None
    return out


# ----------------------------------------------------------------------------------------------- input


def load_prompts(path: str) -> list[dict[str, Any]]:
    """Prompts JSONL -> rows with ``id`` as str; ``id`` str|int, ``context`` and ``query`` str, ids unique."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, obj in jsonl.read_jsonl(path, error=SampleError, where=lambda n: f"{path}:{n}"):
        for name, types in (("id", (str, int)), ("context", (str,)), ("query", (str,))):
            if name not in obj:
                raise SampleError(f"{path}:{n}: field {name!r} is missing")
            v = obj[name]
            if not isinstance(v, types) or isinstance(v, bool):
                want = " or ".join(t.__name__ for t in types)
                raise SampleError(f"{path}:{n}: field {name!r} must be {want}, got {type(v).__name__}")
        pid = str(obj["id"])
        if pid in seen:
            raise SampleError(f"{path}:{n}: field 'id': duplicate prompt id {pid!r}")
        if not obj["context"].strip() and not obj["query"].strip():
            # The policy would see only the chat template: such rows are a broken export, not a question.
            raise SampleError(f"{path}:{n}: fields 'context' and 'query' are both empty")
        seen.add(pid)
        out.append({"id": pid, "context": obj["context"], "query": obj["query"]})
    if not out:
        raise SampleError(f"{path}: no prompts (the file has no records)")
    return out


def recover_output(path: Path, sampler: dict[str, Any]) -> tuple[set[str], int]:
    """Ids already in the Samples file; a torn last line (kill mid-write) is cut off.

    Returns (ids, bytes dropped). A row written with other sampler settings is an error: mixing them would
    silently change what the judge compares. The file is only cut after its complete lines have been read
    as Samples rows and its last line looks like a torn one: an `--out` that names some other file (binary,
    or JSONL of another kind) is an error and is left byte for byte as it was.
    """
    if not path.exists():
        return set(), 0
    data = path.read_bytes()
    keep = jsonl.complete_prefix(data)
    try:
        text = data[:keep].decode("utf-8")
        # A kill can cut a multi-byte character in two; final=False accepts that, not invalid bytes.
        codecs.getincrementaldecoder("utf-8")().decode(data[keep:], final=False)
    except UnicodeDecodeError as e:
        raise SampleError(f"--out {path}: not UTF-8 text ({e.reason}); not a Samples JSONL file?") from None
    ids: set[str] = set()
    lines = jsonl.split_lines(text)
    where = lambda n: f"{path}:{n}"
    for n, row in jsonl.parse_lines(lines, source=str(path), error=SampleError, where=where):
        if not isinstance(row.get("id"), str):
            raise SampleError(f"{path}:{n}: field 'id' missing or not a string (not a Samples file?)")
        if row.get("sampler") != sampler:
            raise SampleError(
                f"{path}:{n}: field 'sampler' is {row.get('sampler')!r}, this run uses {sampler!r}; "
                "write to a new --out file"
            )
        ids.add(row["id"])
    tail = data[keep:]
    if tail.strip() and not tail.lstrip().startswith(b"{"):
        n = text.count("\n") + 1
        raise SampleError(f"{path}:{n}: unterminated last line is not a torn Samples row "
                          "(not a Samples file?)")
    dropped = 0
    if tail:
        _, dropped = jsonl.repair_torn_tail(str(path))
    return ids, dropped


# ----------------------------------------------------------------------------------------------- model


def _model_and_tokenizer_dirs(model: str, tokenizer: str | None) -> Path:
    if tokenizer:
        return Path(tokenizer)
    m = Path(model)
    return m / "tokenizer" if (m / "tokenizer").is_dir() else m


def model_config(model_dir: str, **overrides: Any) -> Any:
    """The ModelConfig of `model_dir` (lr_jax or HF dir) from its config file alone: no weights are read."""
    from lr_jax.convert import ConvertError, read_flax_config, read_hf_config

    d = Path(model_dir)
    if not d.is_dir():
        raise SampleError(f"--model {model_dir}: " + ("not a directory" if d.exists() else "does not exist"))
    try:
        if (d / "model_config.json").exists():
            return read_flax_config(d, **overrides)
        if (d / "config.json").exists():
            return read_hf_config(d, **overrides)
    except ConvertError as e:
        raise SampleError(str(e)) from None
    raise SampleError(f"{model_dir}: neither model_config.json (lr_jax) nor config.json (HF) found")


def load_model(model_dir: str, **overrides: Any) -> tuple[Any, Any]:
    """(ModelConfig, params) from an lr_jax dir (model_config.json) or an HF dir (config.json)."""
    from lr_jax.convert import ConvertError, from_hf, load_flax

    d = Path(model_dir)
    try:
        if (d / "model_config.json").exists():
            return load_flax(d, **overrides)
        if (d / "config.json").exists():
            return from_hf(d, **overrides)
    except ConvertError as e:
        raise SampleError(str(e)) from None
    raise SampleError(f"{model_dir}: neither model_config.json (lr_jax) nor config.json (HF) found")


def eos_ids(cfg: Any, tok: Any, dirs: list[Path]) -> tuple[int, ...]:
    """EOS ids: the model config's, the tokenizer's and any in generation_config.json (e.g. end-of-turn)."""
    ids: set[int] = set()

    def add(v: Any) -> None:
        if isinstance(v, int) and not isinstance(v, bool):
            ids.add(v)
        elif isinstance(v, list | tuple):
            for x in v:
                add(x)

    add(cfg.eos_token_id)
    add(tok.eos_id)
    for d in dirs:
        gen = d / "generation_config.json"
        if gen.exists():
            add(jsonl.read_json_object(gen, error=SampleError).get("eos_token_id"))
    return tuple(sorted(ids))


# ----------------------------------------------------------------------------------------------- run


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


def parse_mesh(spec: str | None, num_devices: int, cfg: Any) -> tuple[int, int, int]:
    """`--mesh` -> (data, fsdp, tensor); None/"" = (num_devices, 1, 1). Uses at most `num_devices`."""
    if not spec:
        return num_devices, 1, 1
    try:
        sizes = [int(x) for x in spec.split(",")]
    except ValueError:
        sizes = []
    if len(sizes) != 3 or any(x == 0 or x < -1 for x in sizes) or sizes.count(-1) > 1:
        raise SampleError(f"--mesh {spec!r}: want DATA,FSDP,TENSOR, positive ints (one may be -1)")
    if -1 in sizes:
        fixed = -int(np.prod(sizes))
        if num_devices % fixed:
            raise SampleError(f"--mesh {spec!r}: fixed axes ({fixed}) do not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // fixed
    data, fsdp, tensor = sizes
    if data * fsdp * tensor > num_devices:
        raise SampleError(f"--mesh {spec!r}: needs {data * fsdp * tensor} devices, {num_devices} available")
    if cfg.num_heads % tensor:
        # Heads are the dim tensor parallelism splits; mirrors config.mesh_shape's check for training.
        raise SampleError(f"--mesh {spec!r}: tensor={tensor} does not divide the model's num_heads "
                          f"{cfg.num_heads}")
    return data, fsdp, tensor


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# Any one of these makes a directory loadable by AutoTokenizer (fast, or convertible to fast).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer.tiktoken")


def load_tokenizer(tok_dir: Path, *, explicit: bool) -> Any:
    """The chat tokenizer in `tok_dir`; a file, or a directory without tokenizer files, is one line."""
    from lr_jax.data.tokenization import ChatTokenizer

    if tok_dir.exists() and not tok_dir.is_dir():
        raise SampleError(f"--tokenizer {tok_dir}: not a directory")
    if tok_dir.is_dir() and not any((tok_dir / f).exists() for f in TOKENIZER_FILES):
        how = "" if explicit else "; pass --tokenizer DIR"
        raise SampleError(f"{tok_dir}: no tokenizer files ({', '.join(TOKENIZER_FILES)}){how}")
    try:
        return ChatTokenizer.from_dir(str(tok_dir))
    except DataError as e:
        raise SampleError(_one_line(str(e))) from None


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


class Completion(NamedTuple):
    """One decoded row: the text (EOS and special tokens dropped), whether an EOS ended it, tokens made."""

    text: str
    finished: bool
    num_tokens: int


@dataclass
class Policy:
    """A model ready to decode: config, params (placed on the mesh), tokenizer, EOS ids and the mesh.

    The one decoding path of the project: `lr_jax.sample` and `lr_jax.eval predict` both call `complete`.
    """

    cfg: Any
    params: Any
    tok: Any
    tok_dir: Path
    eos: tuple[int, ...]
    mesh: Any
    shards: int  # data x fsdp: prompts per batch must be a multiple of it

    @classmethod
    def load(cls, model: str, *, tokenizer: str | None = None, dtype: str | None = None,
             mesh: str | None = None, before_weights: Callable[[Any], None] | None = None) -> Policy:
        """Load `model` (lr_jax or HF dir), its tokenizer and EOS ids; shard the params over `--mesh`.

        Everything that needs no weights (model config, mesh, tokenizer, the caller's `before_weights(cfg)`
        checks) runs first, so bad input fails in seconds, not after minutes of loading.
        """
        import jax

        from lr_jax.model.decode import shard_params
        from lr_jax.parallel.mesh import make_mesh

        if model.lower().endswith(".gguf"):  # converted once into a cached lr_jax dir, then read as one
            from lr_jax.convert import ConvertError, resolve

            try:
                model = str(resolve(model))
            except ConvertError as e:
                raise SampleError(str(e)) from None
        overrides = {"dtype": dtype} if dtype else {}
        cfg = model_config(model, **overrides)  # no weights yet: every check below is cheap
        devices = jax.local_devices()
        data, fsdp, tensor = parse_mesh(mesh, len(devices), cfg)
        tok_dir = _model_and_tokenizer_dirs(model, tokenizer)
        tok = load_tokenizer(tok_dir, explicit=tokenizer is not None)
        eos = eos_ids(cfg, tok, [Path(model), tok_dir])
        if before_weights is not None:
            before_weights(cfg)
        cfg, params = load_model(model, **overrides)
        m = None
        if data * fsdp * tensor > 1:
            m = make_mesh(data, fsdp, tensor, 1, devices=devices[:data * fsdp * tensor])
            params = shard_params(cfg, params, m)
        else:
            params = jax.device_put(params)
        return cls(cfg, params, tok, tok_dir, eos, m, data * fsdp)

    def round_batch(self, batch_size: int) -> int:
        """`batch_size` rounded up to a multiple of the batch shards (every device gets whole prompts)."""
        return -(-batch_size // self.shards) * self.shards

    def check_vocab(self, ids: list[int], where: str) -> None:
        if ids and max(ids) >= self.cfg.vocab_size:
            # jnp.take would silently clamp the id: a tokenizer/model mismatch must not produce samples.
            raise SampleError(f"{where}: token id {max(ids)} >= the model's vocab_size {self.cfg.vocab_size} "
                              f"(tokenizer {self.tok_dir} does not match)")

    def complete(self, prompt_ids: list[list[int]], keys: list[Any], *, num_samples: int, max_new_tokens: int,
                 temperature: float, top_k: int = 0, top_p: float = 1.0,
                 pad_to: int = 256) -> list[list[Completion]]:
        """`num_samples` completions per prompt (keys: `num_samples` per prompt, row b = p * N + k).

        A batch that does not split over the shards is padded with one-token dummy prompts whose rows
        finish at once and are dropped.
        """
        import jax.numpy as jnp

        from lr_jax.model.decode import generate, row_key

        N, n_live = num_samples, len(prompt_ids)
        n_pad = -n_live % self.shards
        ids = list(prompt_ids) + [[self.tok.pad_id]] * n_pad
        keys = list(keys) + [row_key(0, "", 0)] * (n_pad * N)
        gen = generate(self.cfg, self.params, ids, jnp.stack(keys), num_samples=N,
                       max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                       eos_ids=self.eos, pad_id=self.tok.pad_id, pad_to=pad_to, mesh=self.mesh,
                       num_live=n_live)
        tokens, counts, finished = (np.asarray(x) for x in (gen.tokens, gen.num_tokens, gen.finished))
        out = []
        for i in range(n_live):
            rows = []
            for k in range(N):
                b = i * N + k
                row = tokens[b, :counts[b]].tolist()
                if finished[b]:
                    row = row[:-1]  # the EOS that ended the row is not part of the text
                rows.append(Completion(self.tok.tokenizer.decode(row, skip_special_tokens=True),
                                       bool(finished[b]), len(row)))
            out.append(rows)
        return out


def run(args: argparse.Namespace) -> Stats:
    """Sample every missing row of `args.prompts` into `args.out`.

    Every check that needs no weights (options, output path, prompts, model config, mesh, tokenizer,
    prompt-length limits) runs before the weights are loaded, so a bad input fails in seconds, not after
    minutes of loading or sampling.
    """
    validate_args(args)
    out = check_output_file(args.out, args.prompts)

    from lr_jax.model.decode import row_key

    sampler = {"model": args.model_name or os.path.basename(os.path.normpath(args.model)),
               "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    if args.top_k:
        sampler["top_k"] = args.top_k
    stats = Stats()
    prompts = load_prompts(args.prompts)
    stats.prompts = len(prompts)
    done, stats.torn_bytes_dropped = recover_output(out, sampler)
    if stats.torn_bytes_dropped:
        print(f"lr_jax.sample: dropped a torn last line ({stats.torn_bytes_dropped} bytes) from {out}",
              file=sys.stderr)
    todo = []
    for p in prompts:
        missing = [k for k in range(args.num_samples) if f"{p['id']}-{k}" not in done]
        if missing:
            todo.append((p, missing))
    stats.already_done = len(prompts) - len(todo)
    if not todo:
        return stats

    check = lambda cfg: prompt_limit(args.max_prompt_tokens, args.max_new_tokens, cfg, args.model)
    policy = Policy.load(args.model, tokenizer=args.tokenizer, dtype=args.dtype, mesh=args.mesh,
                         before_weights=check)
    batch_size = policy.round_batch(args.batch_size)
    limit = check(policy.cfg)
    out.parent.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    bar = tqdm(total=len(prompts), initial=stats.already_done, desc="sample", unit="prompt",
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
                                   top_k=args.top_k, top_p=args.top_p, pad_to=args.pad_to)
            lines = []
            for (p, missing, _), rows in zip(live, outs, strict=True):
                for k in missing:
                    c = rows[k]
                    row = {"id": f"{p['id']}-{k}", "prompt_id": p["id"], "query": p["query"],
                           "response": c.text,
                           "sampler": sampler, "finish_reason": "stop" if c.finished else "length",
                           "num_tokens": c.num_tokens}
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


def append_fsync(path: Path, lines: list[str]) -> None:
    """Append whole lines and fsync: a kill loses at most the batch being written (its torn tail is cut on
    the next run)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        os.fsync(f.fileno())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lr_jax.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="lr_jax dir (model_config.json) or HF dir (config.json)")
    p.add_argument("--prompts", required=True, help="Prompts JSONL (id, context, query); local or gs://")
    p.add_argument("--out", required=True, help="Samples JSONL to append to (local); resumed if it exists")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default MODEL/tokenizer, else MODEL)")
    p.add_argument("--model-name", default=None, help="name recorded in sampler.model (default: dir name)")
    p.add_argument("--num-samples", type=int, default=10)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--max-prompt-tokens", type=int, default=0,
                   help="middle-truncate contexts to this (default: max_position_embeddings"
                        " - max_new_tokens)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="prompts per prefill (rows = this x num-samples)")
    p.add_argument("--pad-to", type=int, default=256, help="round prompt length up (fewer recompilations)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mesh", default=None,
                   help="DATA,FSDP,TENSOR mesh (default: all local devices on DATA; 1,1,1 = one device)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="compute dtype override")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """The CLI: an input error (`LrJaxError`) is one ``error:`` line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)

    def body() -> None:
        try:
            stats = run(args)
        except DataError as e:  # not an LrJaxError (lr_jax/data is not ours to change): report it as one
            raise SampleError(_one_line(str(e))) from None
        print(json.dumps(stats.__dict__))

    return exit_code(body)


if __name__ == "__main__":
    sys.exit(main())
