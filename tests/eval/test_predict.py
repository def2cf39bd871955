"""Benchmark prompts and middle truncation (`lr_jax.eval.benchmarks`, `lr_jax.eval.predict`), against the
published config files (blob ids checked) and the tokenizer's own tokens."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lr_jax.data import demo
from lr_jax.data.tokenization import ChatTokenizer
from lr_jax.eval import benchmarks as B
from lr_jax.eval.predict import encode_item
from tests.eval.conftest import WORDS, longbench_row

ASSETS = Path(B.__file__).parent / "assets"
BLOBS = {  # git blob ids upstream (THUDM/LongBench@2e00731, THUDM/LongReward@c565778)
    "longbench_dataset2prompt.json": "1c85f6bc0f0df4e42131aa49a867797ee7043ecf",
    "longbench_dataset2maxlen.json": "79d0d9990e5799c845ebcf839c1ee1a4ff14873e",
    "longreward_dataset2prompt.json": "09da030e303c0e51cb03cc95fa2664913a7d635e",
}


def test_prompt_configs_are_the_published_files() -> None:
    for name, blob in BLOBS.items():
        data = (ASSETS / name).read_bytes()
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, name
    assert set(B.longbench_prompts()) == set(B.LONGBENCH_TASKS) == set(B.longbench_max_new_tokens())
    assert set(B.longreward_prompts()) == set(B.JUDGED_LONGBENCH_TASKS)


def _item(task: str, **kw) -> B.Item:
    r = longbench_row(task, 0, **kw)
    return B.Item(r["_id"], task, B.LONGBENCH, r["input"], r["context"], r["answers"], r["all_classes"])


def test_build_prompt_per_style() -> None:
    it = _item("hotpotqa", context="P1. P2.", input="Who?")
    p = B.build_prompt(it)
    assert p == B.Prompt(
        "Answer the question based on the given passages. Only give me the answer and do not output any "
        "other words.\n\nThe following are given passages.\nP1. P2.\n\nAnswer the question based on the "
        "given passages. Only give me the answer and do not output any other words.\n\nQuestion: Who?\n"
        "Answer:",
        True, 32)
    assert B.build_prompt(it, "longreward") == B.Prompt("P1. P2.\n\nWho?", True, 1024)
    gov = _item("gov_report", context="Text.", input="")
    assert B.build_prompt(gov, "longreward").content == (
        "Report:\nText.\n\nPlease write a one-page summary of the above government report.")
    assert B.build_prompt(gov).max_new_tokens == 512
    trec = B.build_prompt(_item("trec", context="Q: a\nType: b", input="Q: c"))
    assert trec == B.Prompt("Please determine the type of the question below. Here are some examples of "
                            "questions.\n\nQ: a\nType: b\nQ: c", False, 64)  # raw text, no chat template
    chat = B.Item("1", B.LONGBENCH_CHAT, B.LONGBENCH_CHAT, "q?", "", ["a"], prompt="doc\n\nq?")
    assert B.build_prompt(chat) == B.Prompt("doc\n\nq?", True, 1024)
    with pytest.raises(B.EvalInputError, match="longreward"):
        B.build_prompt(trec_item := _item("trec"), "longreward")
    assert trec_item.task == "trec"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> ChatTokenizer:
    return ChatTokenizer.from_dir(demo.build_tiny_tokenizer(str(tmp_path_factory.mktemp("tok"))))


@pytest.mark.parametrize("task", ["hotpotqa", "trec"])
def test_middle_truncation_keeps_the_first_and_last_halves(tok: ChatTokenizer, task: str) -> None:
    it = _item(task, context=" ".join(WORDS[:80]), input="Where ?", all_classes=["x"])
    prompt = B.build_prompt(it)
    content = tok.tokenizer(prompt.content, add_special_tokens=False)["input_ids"]  # independent reference
    full, cut = encode_item(tok, it, "longbench", None, 10_000, 32)
    assert cut == 0 and content == [t for t in full if t in set(content)][: len(content)]
    overhead = len(full) - len(content)
    budget = 21  # odd: LongBench keeps 2 * (21 // 2) = 20 tokens, 10 from each end
    ids, cut = encode_item(tok, it, "longbench", budget, 10_000, 32)
    assert cut == len(content) - 20 and len(ids) == overhead + 20
    start = full.index(content[0])
    assert ids[start:start + 10] == content[:10] and ids[start + 10:start + 20] == content[-10:]
    assert ids[:start] == full[:start] and ids[start + 20:] == full[start + len(content):]  # template kept
    # No budget: the model's positions minus new tokens minus the template decide.
    ids2, cut2 = encode_item(tok, it, "longbench", None, overhead + 32 + 21, 32)
    assert (ids2, cut2) == (ids, cut)
    assert encode_item(tok, it, "longbench", None, overhead + 32 + 1, 32) == (None, 0)  # cannot fit


def test_bad_benchmark_files_name_file_record_and_field(tmp_path: Path) -> None:
    p = tmp_path / "hotpotqa.jsonl"
    p.write_text(json.dumps(longbench_row("hotpotqa", 0)) + "\n"
                 + json.dumps(longbench_row("hotpotqa", 1, answers="red")) + "\n")
    with pytest.raises(B.EvalInputError, match=rf"^{p}:2: field 'answers' must be list"):
        B.read_longbench(str(p), "hotpotqa")
    p.write_text(json.dumps(longbench_row("qasper", 0)) + "\n")
    with pytest.raises(B.EvalInputError, match="field 'dataset' is 'qasper'"):
        B.read_longbench(str(p), "hotpotqa")
    c = tmp_path / "chat.json"
    c.write_text(json.dumps([{"idx": 1, "query": "q", "answer": "a"}, {"idx": 2, "query": 3, "answer": "a"}]))
    with pytest.raises(B.EvalInputError, match=rf"^{c}: record 1: field 'query' must be str, got int"):
        B.read_longbench_chat(str(c))
    f = tmp_path / "fs.json"
    f.write_text(json.dumps([[{"answer": "x", "score": 11}]]))
    with pytest.raises(B.EvalInputError, match="question 1, example 0: field 'score' must be an int"):
        B.read_few_shots(str(f))


def test_truncation_with_a_template_that_trims_the_message(tmp_path) -> None:
    """Llama-3's template trims the message; LongBench's passage_count prompt ends in a space."""
    path = demo.build_tiny_tokenizer(str(tmp_path / "tok"))
    tok = ChatTokenizer.from_dir(path)
    tok.tokenizer.chat_template = demo.CHAT_TEMPLATE.replace("m['content'] }}", "m['content'] | trim }}")
    it = _item("passage_count", context=" ".join(WORDS[:80]))
    prompt = B.build_prompt(it)
    assert prompt.content.endswith(": ") and prompt.chat
    content = tok.tokenizer(prompt.content.strip(), add_special_tokens=False)["input_ids"]
    full, _ = encode_item(tok, it, "longbench", None, 10_000, 32)
    ids, cut = encode_item(tok, it, "longbench", 20, 10_000, 32)
    assert cut == len(content) - 20 and len(ids) == len(full) - cut
    start = full.index(content[0])
    assert ids[start:start + 10] == content[:10] and ids[start + 10:start + 20] == content[-10:]
