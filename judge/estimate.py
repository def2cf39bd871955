"""``judge.score --dry-run``: how many calls, tokens and dollars a run would take, before anything is sent.

The estimate renders the real prompts (same templates, same chunking, same BM25 evidence), so the calls and
prompt tokens of the extraction, helpfulness, logicality, statement split and completeness calls are what the
run will send. Two things are only known once the judge has answered, and are guessed:

- the statements of each response: its sentences with at least `MIN_STATEMENT_WORDS` words (a judge drops
  greetings, questions and filler, so this can over-count a chatty answer), at most ``--max-statements``;
  each one's support check is rendered with its real retrieved evidence;
- the completion tokens of each kind of answer (`COMPLETION_TOKENS`), and the length of the information
  extracted per context chunk (a quarter of the chunk, at most 120 tokens), which completeness is then
  shown.

Identical questions are counted once (the run asks them once). Prompt tokens are counted with the regex
approximation (`judge.chunking.approx_tokens`) — a real judge's tokenizer can differ by 10–30%; answers
already in the response cache and rows already done are not counted (the run would not pay for them: rows
are skipped like the run skips them; the cache is not consulted, so a re-run's estimate is an upper bound).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from typing import Any

from judge.chunking import BM25Retriever, Tokenizer, approx_tokens, chunk_text, detect_lang, position_label
from judge.dimensions.completeness import PromptInfo, format_collected
from judge.dimensions.faithfulness import format_evidence
from judge.prompts import render

MIN_STATEMENT_WORDS = 4
# guessed completion tokens per answer kind (short reasoning + score/verdict, as the formats ask)
COMPLETION_TOKENS = {"score": 30, "support": 40, "info_per_chunk": 120}
INFO_SHARE = 0.25  # of a short chunk's tokens kept by the extraction (capped at info_per_chunk)
_SENT = re.compile(r"[^.!?。！？\n]+[.!?。！？]?")
_WORD = re.compile(r"\w{2,}")


def guess_statements(response: str) -> list[str]:
    """The factual statements a judge would likely list: sentences with enough words."""
    out = []
    for s in _SENT.findall(response):
        s = s.strip()
        if len(_WORD.findall(s)) >= MIN_STATEMENT_WORDS and not s.endswith("?"):
            out.append(s)
    return out


def estimate(
    prompts: dict[str, dict[str, Any]],
    todo: list[dict[str, Any]],
    opts: Any,
    structured: str,
    tokenizer: Tokenizer | None = None,
    layout: str = "static-first",
) -> dict[str, Any]:
    """Calls and tokens per dimension for scoring ``todo`` (``opts``: `judge.score.ScoreOptions`)."""
    mode = "tagged" if structured == "tagged" else "json"
    calls: Counter[str] = Counter()
    prompt_tokens: Counter[str] = Counter()
    completion_tokens: Counter[str] = Counter()
    seen: set[str] = set()
    dims = set(opts.dimensions)

    def add(dim: str, kind: str, lang: str, values: dict[str, str], completion: int, extra: int = 0) -> None:
        msgs = render(kind, lang, mode, layout, **values)
        h = hashlib.sha256(json.dumps(msgs, ensure_ascii=False).encode()).hexdigest()
        if h in seen:  # asked once, shared (the client's cache / in-flight sharing)
            return
        seen.add(h)
        calls[dim] += 1
        prompt_tokens[dim] += sum(approx_tokens(m["content"]) for m in msgs) + extra
        completion_tokens[dim] += completion

    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for s in todo:
        by_prompt.setdefault(s["prompt_id"], []).append(s)
    for pid, samples in by_prompt.items():
        prompt = prompts[pid]
        query = prompt["query"]
        big = chunk_text(prompt["context"], opts.completeness_chunk_tokens, tokenizer)
        info_tokens = 0
        if "completeness" in dims:
            for c in big:
                pos = position_label(c.index, len(big))
                values = {"chunk": c.text, "query": query, "position": pos}
                info_ct = min(COMPLETION_TOKENS["info_per_chunk"], int(INFO_SHARE * approx_tokens(c.text)))
                info_tokens += info_ct
                add("completeness", "info_extract", detect_lang(c.text), values, info_ct)
        infos = [{"index": c.index, "position": position_label(c.index, len(big)), "info": ""} for c in big]
        collected = PromptInfo(infos, [], None, [])  # type: ignore[arg-type]
        small = chunk_text(prompt["context"], opts.retrieval_chunk_tokens, tokenizer)
        retriever = BM25Retriever(small) if "faithfulness" in dims else None
        for s in samples:
            response = s["response"]
            lang = detect_lang(query + "\n" + response)
            qr = {"query": query, "response": response}
            for dim in ("helpfulness", "logicality"):
                if dim in dims:
                    add(dim, dim, lang, qr, COMPLETION_TOKENS["score"])
            if retriever is not None:
                statements = guess_statements(response)
                add("faithfulness", "fact_extract", lang, qr, approx_tokens(" ".join(statements)) + 8)
                for st in statements[: opts.max_statements]:
                    idx = retriever.top_k(st, opts.top_k)
                    slang = detect_lang(st)
                    values = {"evidence": format_evidence(small, idx, slang), "statement": st}
                    add("faithfulness", "fact_support", slang, values, COMPLETION_TOKENS["support"])
            if "completeness" in dims:
                values = {"collected": format_collected(collected, lang), **qr}
                add(
                    "completeness",
                    "completeness",
                    lang,
                    values,
                    COMPLETION_TOKENS["score"],
                    info_ct * len(big),
                )
    by_dim = {
        d: {"calls": calls[d], "prompt_tokens": prompt_tokens[d], "completion_tokens": completion_tokens[d]}
        for d in sorted(calls)
    }
    return {
        "responses": len(todo),
        "prompts": len(by_prompt),
        "calls": sum(calls.values()),
        "prompt_tokens": sum(prompt_tokens.values()),
        "completion_tokens": sum(completion_tokens.values()),
        "by_dimension": by_dim,
    }
