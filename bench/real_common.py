"""Shared pieces of the real-model benchmarks (`bench/real_dpo_step.py`, `bench/real_sample.py`).

* the model in both formats: the lr_jax dir converted from the packaged SmolLM2 GGUF, and an HF dir exported
  from it once (`lr_jax.convert.to_hf` + its tokenizer files) for transformers / TRL; or, with ``--smoke``, a
  tiny random Llama (2 layers, 64 wide) saved as an HF dir that both sides read;
* token ids of real English text through the chat template, cut to an exact length;
* workers: each side runs in its own process (so its peak RSS is its own) and waits for commands on stdin;
  the orchestrator alternates the two sides step by step, so load from other jobs hits both alike;
* the machine line (nproc, CPU model, commit, load average) every table is printed with.

Worker protocol: one command a line on stdin (``run``, ``quit``); each answer is one stdout line
``@@ {json}`` (anything else a library prints is ignored).
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TAG = "@@ "
TRL_PYTHON_ENV = "LR_JAX_TRL_PYTHON"
DEFAULT_TRL_PYTHON = "/work/venvs/trl/bin/python"


def peak_rss_mib() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def answer(obj: dict[str, Any]) -> None:
    """A worker's reply line."""
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def commands() -> Any:
    """A worker's command lines, stripped; ends at EOF."""
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield line


class Worker:
    """A worker process: `call(cmd)` sends one command line and returns its ``@@`` reply."""

    def __init__(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        fd, self.log_path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log")
        with os.fdopen(fd, "w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                         text=True, env=env, bufsize=1)

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(TAG):
                return json.loads(line[len(TAG):])
        tail = Path(self.log_path).read_text()[-3000:]
        raise RuntimeError(f"worker {self.name} exited (rc {self.proc.wait()}); stderr tail:\n{tail}")

    def call(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> dict[str, Any]:
        out = self.call("quit")
        self.proc.wait(timeout=60)
        return out


# ------------------------------------------------------------------------------------------------ models
def real_model_dirs() -> tuple[Path, Path]:
    """(lr_jax dir, HF dir) of SmolLM2-135M-Instruct: the GGUF's cached conversion and an HF export of it,
    written once beside it (`<lr_jax dir>-hf`, temp dir renamed into place)."""
    from lr_jax import convert

    flax_dir = convert.resolve(convert.smollm2_gguf())
    hf_dir = flax_dir.parent / f"{flax_dir.name}-hf"
    if not (hf_dir / "config.json").is_file():
        cfg, params = convert.load_flax(flax_dir)
        tmp = Path(tempfile.mkdtemp(dir=flax_dir.parent, prefix=f".{hf_dir.name}-"))
        try:
            convert.to_hf(cfg, params, tmp, dtype="float32")
            for f in (flax_dir / "tokenizer").iterdir():
                shutil.copy(f, tmp / f.name)
            os.rename(tmp, hf_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return flax_dir, hf_dir


def smoke_model_dir(out: Path) -> Path:
    """A tiny random Llama (2 layers, hidden 64, 4/2 heads, tied embeddings) with the demo's word-level chat
    tokenizer, as an HF dir: the same architecture family as SmolLM2, read by both sides in seconds."""
    import jax

    from lr_jax import convert
    from lr_jax.data.demo.synthetic import build_tiny_tokenizer
    from lr_jax.model import ModelConfig, init_params

    build_tiny_tokenizer(str(out))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    cfg = ModelConfig(vocab_size=-(-len(tok) // 64) * 64, hidden_size=64, intermediate_size=128, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=16, tie_embeddings=True,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id)
    convert.to_hf(cfg, init_params(cfg, jax.random.key(0)), out, dtype="float32")
    return out


# ------------------------------------------------------------------------------------------------ tokens
def text_ids(tok: Any, min_tokens: int, seed: int) -> list[int]:
    """Token ids (no special tokens) of invented-town chronicles (`lr_jax.data.prose_qa`), >= min_tokens."""
    from lr_jax.data.prose_qa import make_document

    rng, ids = random.Random(f"real_bench:{seed}"), []
    while len(ids) < min_tokens:
        ids += tok(make_document(rng, 400)["text"] + "\n\n", add_special_tokens=False)["input_ids"]
    return ids


def chat_prompt_ids(tok: Any, length: int, seed: int = 0) -> list[int]:
    """Exactly `length` ids: the chat template's user-turn header, prose, then the end of the user turn and
    the assistant header (the template's own tokens, rendered around a marker and split there)."""
    marker = "\x00MARK\x00"
    text = tok.apply_chat_template([{"role": "user", "content": marker}], tokenize=False,
                                   add_generation_prompt=True)
    head, tail = text.split(marker)
    head_ids = tok(head, add_special_tokens=False)["input_ids"]
    tail_ids = tok(tail, add_special_tokens=False)["input_ids"]
    body = length - len(head_ids) - len(tail_ids)
    if body < 1:
        raise ValueError(f"chat_prompt_ids: {length} tokens cannot hold the template ({len(head_ids)} + "
                         f"{len(tail_ids)})")
    return head_ids + text_ids(tok, body, seed)[:body] + tail_ids


def response_ids(tok: Any, length: int, seed: int) -> list[int]:
    """Exactly `length` ids: prose, then the tokenizer's EOS (the end of an assistant turn)."""
    return [*text_ids(tok, length - 1, seed)[:length - 1], tok.eos_token_id]


# ------------------------------------------------------------------------------------------------ report
def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def machine() -> str:
    """`nproc`, the CPU model and the commit (with `+dirty` when the tree has changes)."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    root = Path(__file__).resolve().parent.parent
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
    return f"nproc {os.cpu_count()}, {cpu}, commit {commit}{dirty}"


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2
