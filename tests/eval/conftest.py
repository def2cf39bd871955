"""Fixtures for the eval tests: a tiny converted model over the demo tokenizer, and small benchmark files in
the published formats (LongBench: one JSONL per task; LongBench-Chat: a JSON list + few-shots file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lr_jax.data import demo

WORDS = demo.vocabulary_texts()[0].split()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random HF Llama (demo tokenizer vocabulary), converted to an lr_jax dir with tokenizer/."""
    import torch
    import transformers as T

    from lr_jax.convert import main as convert_main

    root = tmp_path_factory.mktemp("eval_model")
    hf = root / "hf"
    demo.build_tiny_tokenizer(str(hf))
    tok = T.AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    cfg = T.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                        pad_token_id=tok.pad_token_id)
    model = T.LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large-spread weights: greedy choices depend on the prompt
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.3 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(hf, safe_serialization=True)
    assert convert_main(["hf2flax", "--hf", str(hf), "--out", str(root / "flax")]) == 0
    return str(root / "flax")


def text(i: int, n: int) -> str:
    return " ".join(WORDS[(7 * i + k) % len(WORDS)] for k in range(n))


def longbench_row(task: str, i: int, n_words: int = 60, **kw) -> dict:
    row = {"input": f"Where does {WORDS[i]} live ?", "context": text(i, n_words),
           "answers": [f"{WORDS[i + 1]} {WORDS[i + 2]}"], "length": n_words, "dataset": task,
           "language": "en", "all_classes": None, "_id": f"{task}-{i}"}
    return {**row, **kw}


@pytest.fixture
def longbench_dir(tmp_path: Path) -> Path:
    """hotpotqa (2 items, one with two references), narrativeqa, gov_report, trec: the three judged
    categories and a rule-only task with the first-line rule and classes."""
    d = tmp_path / "LongBench"
    d.mkdir()
    rows = {
        "hotpotqa": [longbench_row("hotpotqa", 0), longbench_row("hotpotqa", 1, answers=["red", "blue sky"])],
        "narrativeqa": [longbench_row("narrativeqa", 2)],
        "gov_report": [longbench_row("gov_report", 3, input="")],
        "trec": [longbench_row("trec", 4, all_classes=["Location", "Animal"], answers=["Location"])],
    }
    for task, rs in rows.items():
        (d / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return d


@pytest.fixture
def chat_files(tmp_path: Path) -> tuple[Path, Path]:
    """LongBench-Chat: 2 questions (published layout: idx, prompt, query, answer) and their few-shots."""
    cases = [{"idx": i + 1, "prompt": text(i, 50) + " " + f"What is {WORDS[i]} ?",
              "query": f"What is {WORDS[i]} ?",
              "answer": f"{WORDS[i]} is {WORDS[i + 3]}"} for i in range(2)]
    shots = [[{"answer": f"example answer {j} for {i}", "score": s} for j, s in enumerate((9, 5, 2))]
             for i in range(2)]
    tc, fs = tmp_path / "test_cases.json", tmp_path / "few_shots.json"
    tc.write_text(json.dumps(cases))
    fs.write_text(json.dumps(shots))
    return tc, fs
