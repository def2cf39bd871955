"""KV-cache decoding and `python -m lr_jax.sample`.

References: `transformers` greedy `generate` (PyTorch, fp32) on tiny random HF models converted with
`lr_jax.convert`; the training forward `lr_jax.model.forward` over prompt + generated tokens; separate
per-row prefills; a NumPy top-k / top-p set; `judge.score`'s own Samples reader; the single-device path
for mesh-sharded runs (8 simulated CPU devices, tests/conftest.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T
from jax.sharding import PartitionSpec as P

from judge.score import load_prompts as judge_load_prompts
from judge.score import load_samples as judge_load_samples
from lr_jax.convert import from_hf
from lr_jax.convert import main as convert_main
from lr_jax.data import demo
from lr_jax.model import ModelConfig, forward, init_params
from lr_jax.model.decode import filter_logits, generate, prefill, row_key, sample_logits, shard_params
from lr_jax.parallel.mesh import make_mesh
from lr_jax.sample import main as sample_main

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
HF_CASES = {
    "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(**COMMON)),
    "qwen2_tied": lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**COMMON, tie_word_embeddings=True)),
    "glm4": lambda: T.Glm4ForCausalLM(T.Glm4Config(**COMMON, head_dim=8, pad_token_id=0)),
}
PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [2, 71], [33, 12, 90, 4, 4, 51, 7, 19, 66, 23, 8]]
NEW = 8


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Large-spread weights so greedy choices have clear margins (no near-ties)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _hf_greedy(model: torch.nn.Module, prompt: list[int], eos: int) -> list[int]:
    with torch.no_grad():
        mask = torch.ones(1, len(prompt), dtype=torch.long)
        out = model.generate(torch.tensor([prompt]), attention_mask=mask,
                             do_sample=False, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0,
                             min_new_tokens=0)
    return out[0, len(prompt):].tolist()


def _keys(ids: list[tuple[str, int]], seed: int = 0) -> jax.Array:
    return jnp.stack([row_key(seed, pid, k) for pid, k in ids])


def _generated(g, b: int) -> list[int]:
    return np.asarray(g.tokens[b, : int(g.num_tokens[b])]).tolist()


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_greedy_matches_transformers_generate(case: str, tmp_path) -> None:
    model = _randomize(HF_CASES[case]())
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg, params = from_hf(tmp_path, attention_backend="blockwise", attention_block_size=8)
    keys = _keys([("p", i) for i in range(len(PROMPTS))])
    # EOS = a token the first prompt's greedy continuation emits mid-way, so stopping is exercised too.
    eos = _hf_greedy(model, PROMPTS[0], eos=-1)[3]
    g = generate(cfg, params, PROMPTS, keys, num_samples=1, max_new_tokens=NEW, temperature=0.0,
                 eos_ids=(eos,), pad_id=0, pad_to=4)
    for b, prompt in enumerate(PROMPTS):
        theirs = _hf_greedy(model, prompt, eos)
        assert _generated(g, b) == theirs[: len(_generated(g, b))] and len(theirs) == int(g.num_tokens[b])
        assert bool(g.finished[b]) == (eos in theirs)
        assert (np.asarray(g.tokens[b, int(g.num_tokens[b]):]) == 0).all()  # pad after EOS
    assert bool(g.finished[0]) and int(g.num_tokens[0]) <= 4


def _tiny(**kw) -> tuple[ModelConfig, dict]:
    cfg = ModelConfig.tiny(attention_backend="reference", qkv_bias=True, **kw)
    params = init_params(cfg, jax.random.key(0))
    # Larger weights than init (0.02) so logits are O(1) and sampling/greedy depend on the prompt.
    return cfg, jax.tree.map(lambda a: a * 10 if a.ndim > 2 else a, params)


def test_cached_decode_logits_equal_full_forward() -> None:
    cfg, params = _tiny()
    g = generate(cfg, params, PROMPTS, _keys([("a", 0), ("b", 0), ("c", 0)]), num_samples=1,
                 max_new_tokens=NEW, temperature=1.0, return_logits=True)
    for b, prompt in enumerate(PROMPTS):
        seq = prompt + np.asarray(g.tokens[b]).tolist()
        ref = np.asarray(forward(cfg, params, jnp.asarray([seq])))[0, len(prompt) - 1: len(prompt) - 1 + NEW]
        ours = np.asarray(g.logits[b])
        scale = max(1.0, float(np.abs(ref).max()))
        np.testing.assert_allclose(ours, ref, atol=1e-5 * scale, rtol=0)


def test_shared_prefix_equals_separate_prefills_and_is_batch_independent() -> None:
    cfg, params = _tiny()
    n = 3
    rows = [(pid, k) for pid in ("x", "y", "z") for k in range(n)]
    shared = generate(cfg, params, PROMPTS, _keys(rows), num_samples=n, max_new_tokens=NEW, temperature=1.0,
                      return_logits=True)
    separate = generate(cfg, params, [p for p in PROMPTS for _ in range(n)], _keys(rows), num_samples=1,
                        max_new_tokens=NEW, temperature=1.0, return_logits=True)
    np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(separate.tokens))
    np.testing.assert_allclose(np.asarray(shared.logits), np.asarray(separate.logits), atol=1e-5)
    # Samples of one prompt differ (keys differ), so the comparison above is not vacuous.
    assert len({tuple(np.asarray(shared.tokens[b]).tolist()) for b in range(n)}) > 1
    # Prompt "y" alone, in a batch of one, gives the same rows as inside the batch of three.
    alone = generate(cfg, params, [PROMPTS[1]], _keys(rows[n:2 * n]), num_samples=n, max_new_tokens=NEW,
                     temperature=1.0)
    np.testing.assert_array_equal(np.asarray(alone.tokens), np.asarray(shared.tokens[n:2 * n]))
    again = generate(cfg, params, PROMPTS, _keys(rows), num_samples=n, max_new_tokens=NEW, temperature=1.0)
    np.testing.assert_array_equal(np.asarray(again.tokens), np.asarray(shared.tokens))
    other_seed = generate(cfg, params, PROMPTS, _keys(rows, seed=1), num_samples=n, max_new_tokens=NEW,
                          temperature=1.0)
    assert not np.array_equal(np.asarray(other_seed.tokens), np.asarray(shared.tokens))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_mesh_sharded_generate_equals_single_device(temperature: float) -> None:
    cfg, params = _tiny()  # 4 heads, 2 KV heads: tensor=2 splits both
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, cfg.vocab_size, n).tolist() for n in (7, 2, 11, 5, 3, 9, 4, 6)]
    n = 3
    keys = _keys([(f"p{i}", k) for i in range(len(prompts)) for k in range(n)])
    kw = dict(num_samples=n, max_new_tokens=NEW, temperature=temperature, pad_to=4, return_logits=True)
    ref = generate(cfg, params, prompts, keys, **kw)
    # Not vacuous: rows differ across prompts, and (sampling) across the samples of one prompt.
    distinct = len({tuple(np.asarray(ref.tokens[b]).tolist()) for b in range(len(keys))})
    assert distinct > (len(prompts) if temperature else 1)
    for shape, batch_axes in (((8, 1, 1), "data"), ((2, 2, 2), ("data", "fsdp"))):
        mesh = make_mesh(*shape, 1)
        g = generate(cfg, params, prompts, keys, mesh=mesh, **kw)
        np.testing.assert_array_equal(np.asarray(g.tokens), np.asarray(ref.tokens), err_msg=str(shape))
        np.testing.assert_array_equal(np.asarray(g.num_tokens), np.asarray(ref.num_tokens))
        np.testing.assert_allclose(np.asarray(g.logits), np.asarray(ref.logits), atol=1e-4)
        # The work really is split: rows over the batch axes, caches over prompts and KV heads, params too.
        assert g.tokens.sharding.spec[0] == batch_axes
        sharded = shard_params(cfg, params, mesh)
        with jax.set_mesh(mesh):
            tokens = jax.device_put(np.ones((8, 12), np.int32), jax.NamedSharding(mesh, P(batch_axes)))
            pre = prefill(cfg, sharded, tokens, jax.device_put(np.full(8, 12, np.int32), tokens.sharding))
        want = jax.NamedSharding(mesh, P(None, batch_axes, None, "tensor" if shape[2] > 1 else None, None))
        assert pre.k.sharding.is_equivalent_to(want, 5) and pre.v.sharding.is_equivalent_to(want, 5)
        if shape[1] * shape[2] > 1:
            assert not sharded["layers"]["mlp"]["up"]["kernel"].sharding.is_fully_replicated
    # Batch padding: 6 real prompts + 2 dummies on data=8; real rows unchanged, dummy rows finished and empty.
    padded = generate(cfg, params, [*prompts[:6], [1], [1]], keys, mesh=make_mesh(8, 1, 1, 1), num_live=6,
                      **kw)
    np.testing.assert_array_equal(np.asarray(padded.tokens[:18]), np.asarray(ref.tokens[:18]))
    assert (np.asarray(padded.tokens[18:]) == 0).all() and np.asarray(padded.finished[18:]).all()
    with pytest.raises(ValueError, match="do not split over mesh data x fsdp = 8"):
        generate(cfg, params, prompts[:3], keys[:9], mesh=make_mesh(8, 1, 1, 1), **kw)


def _allowed_np(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """Reference support (float64): top-k by rank, then the smallest sorted prefix with mass >= p."""
    x = logits.astype(np.float64) / temperature
    out = np.zeros_like(x, bool)
    for r in range(x.shape[0]):
        order = np.argsort(-x[r], kind="stable")
        if top_k:
            order = order[:top_k]
        p = np.exp(x[r, order] - x[r, order].max())
        p /= p.sum()
        n_keep = int(np.searchsorted(np.cumsum(p), top_p - 1e-12) + 1) if top_p < 1 else len(order)
        out[r, order[:n_keep]] = True
    return out


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (7, 0.8), (0, 1.0)])
def test_top_k_top_p_restrict_support(top_k: int, top_p: float) -> None:
    logits = np.random.default_rng(0).normal(0, 2.0, size=(6, 40)).astype(np.float32)
    allowed = _allowed_np(logits, 0.7, top_k, top_p)
    kept = np.asarray(filter_logits(jnp.asarray(logits), 0.7, top_k, top_p)) > -1e29
    np.testing.assert_array_equal(kept, allowed)
    keys = jax.random.split(jax.random.key(3), 400 * 6).reshape(400, 6)
    draws = np.asarray(jax.vmap(lambda k: sample_logits(jnp.asarray(logits), k, 0.7, top_k, top_p))(keys))
    hit = np.zeros_like(allowed)
    for r in range(6):
        hit[r, draws[:, r]] = True
    assert (hit <= allowed).all()  # never outside the support
    assert hit.sum() >= min(allowed.sum(), 6 * 3)  # and not collapsed to one token


def test_greedy_is_argmax_of_logits() -> None:
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 30)), jnp.float32)
    greedy = sample_logits(logits, jax.random.split(jax.random.key(0), 4), 0.0)
    np.testing.assert_array_equal(np.asarray(greedy), np.asarray(logits).argmax(-1))


# ------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    """A tiny HF Llama over the demo tokenizer's vocabulary, converted to an lr_jax dir (with tokenizer/)."""
    root = tmp_path_factory.mktemp("sample_model")
    hf = root / "hf"
    demo.build_tiny_tokenizer(str(hf))
    tok = T.AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    cfg = T.LlamaConfig(**{**COMMON, "vocab_size": len(tok), "max_position_embeddings": 512},
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                        pad_token_id=tok.pad_token_id)
    _randomize(T.LlamaForCausalLM(cfg)).save_pretrained(hf, safe_serialization=True)
    assert convert_main(["hf2flax", "--hf", str(hf), "--out", str(root / "flax")]) == 0
    return str(root / "flax")


def _write_prompts(path, n: int = 3) -> None:
    words = demo.vocabulary_texts()[0].split()
    rows = [{"id": i if i % 2 else f"p{i}", "context": " ".join(words[7 * i: 7 * i + 40]),
             "query": "What is the value of the key ?"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _cli(model_dir: str, prompts, out, *extra: str) -> int:
    return sample_main(["--model", model_dir, "--prompts", str(prompts), "--out", str(out),
                        "--num-samples", "3",
                        "--max-new-tokens", "6", "--batch-size", "2", "--pad-to", "64", "--no-progress",
                        "--max-prompt-tokens", "30", *extra])


def test_cli_writes_judge_readable_rows_and_resumes_after_a_kill(model_dir: str, tmp_path, capsys) -> None:
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "samples.jsonl"
    _write_prompts(prompts)
    assert _cli(model_dir, prompts, out) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["rows_written"] == 9 and stats["truncated_prompts"] == 3  # 40-word contexts > 30 tokens
    rows = judge_load_samples(out, judge_load_prompts(prompts))
    assert [r["id"] for r in rows] == [f"{pid}-{k}" for pid in ("p0", "1", "p2") for k in range(3)]
    assert all(r["sampler"] == {"model": "flax", "temperature": 1.0, "top_p": 1.0, "seed": 0} for r in rows)
    assert len({r["response"] for r in rows}) > 1
    full = out.read_text()

    # Simulated kill: two complete rows survive, the third is half written.
    lines = full.splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:25])
    assert _cli(model_dir, prompts, out) == 0
    assert out.read_text() == full  # missing rows regenerated exactly, no duplicates, torn bytes gone
    assert _cli(model_dir, prompts, out) == 0  # nothing left to do
    assert out.read_text() == full


def test_cli_bad_input_is_one_clear_error(model_dir: str, tmp_path, capsys) -> None:
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "samples.jsonl"
    prompts.write_text('{"id": "a", "context": "x", "query": "q"}\n{"id": "b", "context": 3, "query": "q"}\n')
    assert _cli(model_dir, prompts, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {prompts}:2: field 'context' must be str, got int"]
    _write_prompts(prompts)
    out.write_text(json.dumps({"id": "p0-0", "sampler": {"model": "other"}}) + "\n")
    assert _cli(model_dir, prompts, out) == 2
    assert "field 'sampler'" in capsys.readouterr().err


def test_cli_skips_prompt_whose_query_alone_does_not_fit(model_dir: str, tmp_path, capsys) -> None:
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "samples.jsonl"
    words = demo.vocabulary_texts()[0].split()
    rows = [{"id": "long", "context": "a b", "query": " ".join(words[:50])},
            {"id": "ok", "context": " ".join(words[:10]), "query": "value ?"}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _cli(model_dir, prompts, out) == 0
    cap = capsys.readouterr()
    stats = json.loads(cap.out.strip().splitlines()[-1])
    assert stats["skipped_too_long"] == ["long"] and stats["truncated_prompts"] == 0
    assert "skipped 1" in cap.err
    assert [json.loads(x)["prompt_id"] for x in out.read_text().splitlines()] == ["ok"] * 3


def test_cli_reads_hf_dir_directly_with_same_result(model_dir: str, tmp_path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    _write_prompts(prompts, n=2)
    hf_dir = str(Path(model_dir).parent / "hf")  # the HF checkpoint + tokenizer the fixture converted
    assert _cli(model_dir, prompts, tmp_path / "a.jsonl", "--model-name", "m") == 0
    assert _cli(hf_dir, prompts, tmp_path / "b.jsonl", "--model-name", "m") == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()


def test_cli_with_a_mesh_writes_the_single_device_file(model_dir: str, tmp_path, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    _write_prompts(prompts, n=3)  # 3 prompts, batch size 2: last batch padded to the batch shards
    outs = {}
    for mesh in ("1,1,1", "2,2,2", "8,1,1", "-1,2,1"):
        outs[mesh] = tmp_path / f"{mesh}.jsonl"
        assert _cli(model_dir, prompts, outs[mesh], f"--mesh={mesh}") == 0
        assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows_written"] == 9
    single = outs["1,1,1"].read_bytes()
    assert single.count(b"\n") == 9
    for mesh, path in outs.items():
        assert path.read_bytes() == single, mesh
    for bad, why in (("4,4,1", "needs 16 devices"), ("1,1,3", "does not divide"), ("2,x,1", "DATA,FSDP")):
        assert _cli(model_dir, prompts, tmp_path / "bad.jsonl", f"--mesh={bad}") == 2
        assert why in capsys.readouterr().err


def test_sample_options_are_the_one_source_of_flags_defaults_and_checks(capsys) -> None:
    import dataclasses

    from lr_jax.sample import SampleError, SampleOptions, decoding_fields
    from lr_jax.sample.cli import build_parser

    base = dict(model="m", prompts="p.jsonl", out="o.jsonl")
    assert SampleOptions(**base).num_samples == 10 and decoding_fields()["temperature"] == 1.0
    cases = (("temperature", float("nan"), "--temperature nan"), ("top_p", 0.0, "--top-p 0.0"),
             ("seed", 2**32, f"--seed {2**32}"), ("temperature", 1e-9, "--temperature 1e-09"))
    for field, bad, flag in cases:
        with pytest.raises(SampleError, match=flag):
            SampleOptions(**base, **{field: bad})
    # every field is a flag whose default is the field's (parsed options == the dataclass defaults)
    parsed = vars(build_parser().parse_args(["--model", "m", "--prompts", "p.jsonl", "--out", "o.jsonl"]))
    assert parsed == dataclasses.asdict(SampleOptions(**base))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "(default 1024)" in capsys.readouterr().out
