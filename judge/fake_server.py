"""A real OpenAI-compatible HTTP server with a deterministic scripted judge, for tests, benches and demos.

    python -m judge.fake_server --port 0 [--config '{"latency_s": 2}']   # prints "URL http://127.0.0.1:PORT/v1"

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/embeddings`` (hashed bag of words), ``GET /stats``
(request counts per prompt kind, statuses, answered request hashes), ``GET /requests/<hash>`` (the answered
request with that body hash), ``POST /control`` (merge new fault
settings), ``POST /reset`` (zero the counters).

The scripted judge recognises each of our prompt kinds by the "Task id: <kind>" in the system message and
answers from word overlap, so its scores mean something: statements are the response's sentences, support is
the share of a statement's words found in the evidence, completeness is the share of collected words the
response covers. It answers JSON when ``response_format`` asks for it (or 400s if ``json_schema`` is off),
else tagged text.

Faults (`Faults`, all deterministic by request number): 429 with Retry-After, 500, hangs longer than the
client timeout, garbled or truncated completions, per-kind garbling, latency, a server-side RPM limit, a
required key, and malformed HTTP 200 answers (``bad_body``: truncated JSON, the wrong content type, an empty
body, an error object, no choices, non-text content).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, OrderedDict, deque
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from judge.chunking import approx_tokens, detect_lang, retrieval_terms


@dataclass
class Faults:
    latency_s: float = 0.0  # added to every chat request
    fail_429_first: int = 0  # the first N chat requests get 429
    error_429_every: int = 0  # every k-th chat request gets 429 (0: never)
    retry_after_s: float = 0.2  # sent as Retry-After (and retry-after-ms) with each 429
    error_500_every: int = 0
    hang_every: int = 0  # every k-th request sleeps hang_s before answering (longer than the client timeout)
    hang_s: float = 5.0
    garble_every: int = 0  # every k-th answer is unparseable prose
    truncate_every: int = 0  # every k-th answer is cut in half (finish_reason "length")
    garble_kinds: list[str] = field(
        default_factory=list
    )  # these prompt kinds are always answered with garbage
    json_schema: bool = True  # False: reject response_format like a server without structured output
    rpm_limit: int = 0  # server-side requests per minute (0: none); excess gets 429
    require_key: str = ""  # non-empty: 401 unless "Authorization: Bearer <require_key>"
    # malformed 200 answers (see `_bad_body`): one of BAD_BODIES; every k-th chat request; only these kinds
    bad_body: str = ""
    bad_body_every: int = 1
    bad_body_kinds: list[str] = field(default_factory=list)
    garble_document_with: str = ""  # info_extract answers for a document part containing this are garbled
    # Batch API (see the "Files and Batches" section): a batch stays in_progress for batch_delay_s after it
    # is created; batch_fail ends the next batches as "failed" (no output); batch_expire as "expired" with
    # only the first half of the requests answered (the rest in the error file, code batch_expired)
    batch_delay_s: float = 0.0
    batch_fail: bool = False
    batch_expire: bool = False
    # prompt (prefix) caching: usage.prompt_tokens_details.cached_tokens counts the longest prefix of the
    # request's messages already seen, in steps of prefix_cache_step characters from prefix_cache_min chars
    prefix_cache: bool = True
    prefix_cache_min: int = 1024
    prefix_cache_step: int = 128
    # how many prefix blocks (one per prefix_cache_step characters) the cache holds, least recently used
    # evicted first, like a vLLM/SGLang KV-block pool or a provider's cache that forgets idle prefixes;
    # 0: unlimited (every prefix ever seen stays cached)
    prefix_cache_blocks: int = 0


class _State:
    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.by_kind: Counter[str] = Counter()  # 200 answers per kind
        self.attempts_by_kind: Counter[str] = Counter()
        self.status: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()  # request-body hash -> 200 answers (duplicates = paid twice)
        self.bodies: dict[str, dict[str, Any]] = {}  # body hash -> the request (GET /requests/<hash>)
        self.temperatures: Counter[str] = Counter()
        self.by_lang: Counter[str] = Counter()  # 'kind:en' / 'kind:zh' by the prompt's language
        self.auth_ok = 0
        self.window: deque[float] = deque()
        self.embeddings = 0
        self.tokens = 0
        self.cached_tokens = 0
        # hashes of message prefixes seen (prompt caching), least recently used first
        self.prefixes: OrderedDict[str, None] = OrderedDict()
        self.files: dict[str, dict[str, Any]] = {}  # id -> {"meta": file object, "data": bytes}
        self.batches: dict[str, dict[str, Any]] = {}  # id -> batch object (+ private "_due" time)
        self.batch_stats: Counter[str] = Counter()  # created / retrieved / completed / failed / expired

    def count_answer(self, kind: str, body_hash: str, req: dict[str, Any], system: str, tokens: int,
                     cached: int) -> None:
        """Account one 200 answer (online or inside a batch); the caller holds `lock`."""
        self.by_kind[kind] += 1
        self.answered[body_hash] += 1
        self.bodies.setdefault(body_hash, req)
        self.temperatures[str(req.get("temperature"))] += 1
        self.by_lang[f"{kind}:{detect_lang(system)}"] += 1
        self.tokens += tokens
        self.cached_tokens += cached


# ---------------------------------------------------------------------------------------------- scripted
# judge

_BLOCK_RE = re.compile(r"<(\w+)>\n(.*?)\n</\1>", re.S)
_SENT_RE = re.compile(r"[^.!?。！？\n]+[.!?。！？]?")
_LIST_MARKER_RE = re.compile(r"^(?:[-*•]+|\d+[.)])\s+")
_FILLER = ("hope this helps", "great question", "let me know", "in summary", "overall", "i hope", "希望")


def _words(text: str) -> set[str]:
    return {w for w in retrieval_terms(text) if len(w) >= 3 or not w.isascii()}


def _sentences(text: str) -> list[str]:
    out = []
    for s in _SENT_RE.findall(text):
        # Drop a list marker ("- ", "2) ", "3. "), not a leading number: "1850." is an answer, not a bullet.
        s = _LIST_MARKER_RE.sub("", s.strip()).strip()
        if s:
            out.append(s)
    return out


def _is_statement(sentence: str) -> bool:
    """A factual claim worth checking: not a question or a pleasantry, and at least one key word.

    One key word is enough: a short answer ("Ashford.") claims a fact as much as a sentence does, and with
    a three-word minimum a wrong one-word answer was never checked, so it kept faithfulness 10.
    """
    return bool(_words(sentence)) and not any(f in sentence.lower() for f in _FILLER) \
        and not sentence.endswith("?")


def _support_level(ratio: float) -> str:
    """Support of a statement from the share of its key words found in the evidence.

    "full" needs every key word: a statement that copies the document's wording but swaps in one value the
    document never mentions ("The capital of Veloria is Dunford." when it says Glenford) is only partly
    supported. With a lower bar such a wrong answer scored as faithful as the right one, and the loop's
    judged rewards could not tell them apart (lr_jax.longreward's demo depends on that difference).
    """
    return "full" if ratio >= 0.999 else "partial" if ratio >= 0.5 else "none"


def _judge(kind: str, blocks: dict[str, str]) -> dict[str, Any]:
    """The scripted answer for one prompt kind, as the JSON object the schema asks for."""
    if kind.startswith("eval_"):
        return _eval_rating(kind, blocks)
    query, response = blocks.get("question", ""), blocks.get("answer", "")
    if kind == "helpfulness":
        # Judged from the question and the answer alone (no document, as LongReward's helpfulness is): an
        # answer that states something earns the base 6 whether it is right or wrong (that is faithfulness's
        # and completeness's to tell), more for the question's key terms and for detail. No statement (an
        # empty answer, "?", a pleasantry) answers nothing: 0. With the base at 0 every one-word answer scored
        # 0.1, so an empty answer (faithfulness 10: nothing claimed) out-scored a direct wrong one.
        q, r = _words(query), _words(response)
        if not any(_is_statement(s) for s in _sentences(response)):
            return {"reasoning": "The response does not answer the question.", "score": 0.0}
        cover = len(q & r) / max(1, len(q))
        length = min(1.0, len(r) / 40)
        score = round(6 + 2 * cover + 2 * length, 1)
        return {
            "reasoning": f"The answer uses {len(q & r)} of the question's {len(q)} key terms.",
            "score": score,
        }
    if kind == "logicality":
        # Sentences without a key word ("." or "...") argue nothing: with them an empty answer scored 9.
        sents = [s for s in _sentences(response) if _words(s)]
        if not sents:
            return {"reasoning": "There is no argument to assess.", "score": 0.0}
        dup = 1 - len({s.lower() for s in sents}) / len(sents)
        score = round(max(0.0, min(10.0, 9.0 - 8 * dup)), 1)
        return {"reasoning": f"{len(sents)} sentences, {dup:.0%} repeated.", "score": score}
    if kind == "fact_extract":
        return {"statements": [s for s in _sentences(response) if _is_statement(s)][:20]}
    if kind == "fact_support":
        s, e = _words(blocks.get("statement", "")), _words(blocks.get("evidence", ""))
        ratio = len(s & e) / max(1, len(s))
        return {
            "reasoning": f"{ratio:.0%} of the statement's key words occur in the evidence.",
            "support": _support_level(ratio),
        }
    if kind == "info_extract":
        q = _words(query)
        hits = [s for s in _sentences(blocks.get("document_part", "")) if len(_words(s) & q) >= 2]
        if not hits:
            return {"relevant": False, "info": ""}
        return {"relevant": True, "info": " ".join(hits[:5])}
    if kind == "completeness":
        c = _words(blocks.get("collected_information", "").replace("NONE", ""))
        r = _words(response)
        cover = len(c & r) / max(1, len(c))
        score = round(min(10.0, 20 * cover), 1) if c else 5.0
        return {"reasoning": f"The answer covers {cover:.0%} of the collected key words.", "score": score}
    return {"reasoning": f"unknown task {kind!r}", "score": 5.0}


# ---------------------------------------------------------------------------------------------- scripted
# benchmark ratings (judge.eval: eval_qa 1-3, eval_summ 1-5, eval_chat 1-10)

EVAL_SCALES = {"eval_qa": 3, "eval_summ": 5, "eval_chat": 10}
UNRATEABLE = "UNRATEABLE"  # a prediction containing this gets an unparseable rating (null), every time


def _eval_rating(kind: str, blocks: dict[str, str]) -> dict[str, Any]:
    """Rating = 1 + round((scale - 1) x the share of the reference's key words the answer contains)."""
    answer = blocks.get("assistant_answer", "")
    if UNRATEABLE in answer:
        return {"reasoning": "I cannot decide.", "rating": None}
    ref, ans = _words(blocks.get("reference_answer", "")), _words(answer)
    cover = len(ref & ans) / max(1, len(ref))
    top = EVAL_SCALES.get(kind, 10)
    rating = 1 + round((top - 1) * cover)
    return {"reasoning": f"The answer has {len(ref & ans)} of the reference's {len(ref)} key words.",
            "rating": rating}


def _as_tagged(kind: str, obj: dict[str, Any]) -> str:
    if "rating" in obj:
        return f"<reasoning>{obj['reasoning']}</reasoning>\n<rating>{obj['rating']}</rating>"
    if "statements" in obj:
        return (
            "\n".join(f"<statement>{s}</statement>" for s in obj["statements"])
            or "<statement>NONE</statement>"
        )
    if "support" in obj:
        return f"<reasoning>{obj['reasoning']}</reasoning>\n<support>{obj['support']}</support>"
    if "info" in obj:
        return f"<info>{obj['info'] if obj['relevant'] else 'NONE'}</info>"
    return f"<reasoning>{obj['reasoning']}</reasoning>\n<score>{obj['score']}</score>"



# ---------------------------------------------------------------------------------------------- Files and
# Batches (the OpenAI Batch API wire format; `vllm run-batch` reads and writes the same JSONL), and prompt
# caching. Kept in their own functions so the scripted judge above stays the one place answers come from.

_GARBLE = "Well, it depends on how you look at it; I would rather not commit to a verdict."
_TERMINAL = ("completed", "failed", "expired", "cancelled")


def _usage(pt: int, ct: int, cached: int) -> dict[str, Any]:
    """An OpenAI usage object; cached prompt tokens as OpenAI and vLLM report them."""
    return {
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "total_tokens": pt + ct,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _cached_prefix_tokens(st: _State, messages: list[dict[str, Any]]) -> int:
    """Prompt caching like a real server's: the tokens of the longest prefix of this request's messages
    (in ``prefix_cache_step``-character steps, from ``prefix_cache_min`` characters) that an earlier request
    already had. Deterministic given the order of requests; every prefix of this one is remembered (the
    least recently used are forgotten beyond ``prefix_cache_blocks``)."""
    f = st.faults
    if not f.prefix_cache:
        return 0
    text = "".join(f"<{m.get('role')}>{m.get('content', '')}" for m in messages)
    step, lo = max(1, f.prefix_cache_step), max(1, f.prefix_cache_min)
    h, best, seen = hashlib.sha256(), 0, []
    for end in range(step, len(text) + 1, step):
        h.update(text[end - step : end].encode())
        if end >= lo:
            seen.append((end, h.hexdigest()))
    with st.lock:
        for end, d in seen:
            if d in st.prefixes:
                best = end
        for _, d in seen:  # this request's prefixes are now the most recently used
            st.prefixes[d] = None
            st.prefixes.move_to_end(d)
        while f.prefix_cache_blocks and len(st.prefixes) > f.prefix_cache_blocks:
            st.prefixes.popitem(last=False)
    if not best:
        return 0
    # tokens of the cached characters, never more than the prompt's own count
    return min(approx_tokens(text[:best]), sum(approx_tokens(m.get("content", "")) for m in messages))


def scripted_chat(st: _State, req: dict[str, Any], n: int) -> tuple[int, dict[str, Any]]:
    """(status code, body) of one chat request inside a batch: the scripted judge's answer, as `_chat`
    gives it online (same text, same usage), without the transport faults, which a batch does not have."""
    messages = req.get("messages", [])
    system = " ".join(m.get("content", "") for m in messages if m.get("role") == "system")
    user = "\n".join(m.get("content", "") for m in messages if m.get("role") == "user")
    m = re.search(r"Task id: (\w+)", system)
    kind = m.group(1) if m else "unknown"
    f = st.faults
    rf = req.get("response_format") or {}
    want_json = rf.get("type") in ("json_schema", "json_object")
    if want_json and not f.json_schema:
        msg = "response_format json_schema is not supported by this server"
        return 400, {"error": {"message": msg, "type": "fake_error", "code": 400}}
    obj = _judge(kind, {k: v for k, v in _BLOCK_RE.findall(user)})
    text = json.dumps(obj, ensure_ascii=False) if want_json else _as_tagged(kind, obj)
    if kind in f.garble_kinds or _garbles(f, kind, user):
        text = _GARBLE
    pt = sum(approx_tokens(mm.get("content", "")) for mm in messages)
    ct = approx_tokens(text)
    cached = _cached_prefix_tokens(st, messages)
    body_hash = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:16]
    with st.lock:
        st.count_answer(kind, body_hash, req, system, pt + ct, cached)
        st.batch_stats["requests"] += 1
    return 200, {
        "id": f"chatcmpl-fake-batch-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model", "fake-judge"),
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": _usage(pt, ct, cached),
    }


def run_batch_lines(st: _State, lines: list[str], limit: int | None = None) -> tuple[list[str], list[str]]:
    """Answer Batch-API input lines: (output lines, error lines). Only the first ``limit`` requests are
    answered (an expired batch); the rest become ``batch_expired`` errors. Output is in reverse input order
    (the API promises no order, so clients must match by custom_id)."""
    out, err = [], []
    for i, line in enumerate(x for x in lines if x.strip()):
        item = json.loads(line)
        cid = item.get("custom_id")
        if limit is not None and i >= limit:
            e = {"code": "batch_expired", "message": "not executed before the batch expired"}
            err.append(json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": None, "error": e}))
            continue
        code, body = scripted_chat(st, item.get("body") or {}, i)
        resp = {"status_code": code, "request_id": f"req_{i}", "body": body}
        out.append(json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": resp, "error": None},
                              ensure_ascii=False))
    return out[::-1], err


def run_batch_file(src: str, dst: str, faults: Faults | None = None) -> int:
    """``python -m judge.fake_server --run-batch IN OUT``: an offline runner like ``vllm run-batch -i IN -o
    OUT``, answering with the scripted judge. Returns the number of requests answered."""
    st = _State(faults or Faults())
    with open(src, encoding="utf-8") as fin:
        out, _ = run_batch_lines(st, fin.read().splitlines())
    with open(dst, "w", encoding="utf-8") as fout:
        fout.write("".join(line + "\n" for line in out))
    return len(out)


class _BatchEndpoints:
    """``POST /v1/files`` (multipart), ``GET /v1/files/{id}`` and ``/content``, ``POST /v1/batches``,
    ``GET /v1/batches/{id}``. A batch is answered when it is first retrieved after ``batch_delay_s``."""

    server: _Server
    headers: Any
    rfile: Any

    def _new_file(self, name: str, purpose: str, data: bytes) -> dict[str, Any]:
        st = self.server.state
        with st.lock:
            fid = f"file-fake-{len(st.files) + 1}"
            meta = {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                    "filename": name, "purpose": purpose, "status": "processed"}
            st.files[fid] = {"meta": meta, "data": data}
        return meta

    def _file_upload(self) -> None:
        import email.parser
        import email.policy

        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n)
        head = f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
        fields: dict[str, Any] = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True))
        if "file" not in fields:
            return self._send(400, {"error": {"message": "no file part", "type": "invalid_request_error"}})
        purpose = (fields.get("purpose") or (None, b"batch"))[1].decode()
        self._send(200, self._new_file(fields["file"][0] or "upload.jsonl", purpose, fields["file"][1]))

    def _batch_create(self, req: dict[str, Any]) -> None:
        st = self.server.state
        fid = req.get("input_file_id")
        with st.lock:
            known = fid in st.files
        if not known:
            return self._send(404, {"error": {"message": f"no file {fid}", "type": "invalid_request_error"}})
        if req.get("endpoint") != "/v1/chat/completions":
            return self._send(400, {"error": {"message": "only /v1/chat/completions", "type": "invalid"}})
        with st.lock:
            bid = f"batch_fake_{len(st.batches) + 1}"
            batch = {
                "id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id": fid,
                "completion_window": req.get("completion_window", "24h"), "status": "validating",
                "created_at": int(time.time()), "output_file_id": None, "error_file_id": None,
                "errors": None, "metadata": req.get("metadata"),
                "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "_created": time.monotonic(),
            }
            st.batches[bid] = batch
            st.batch_stats["created"] += 1
        self._send(200, _public(batch))

    def _batch_get(self, path: str) -> None:
        st = self.server.state
        parts = path.split("/")  # ["", "v1", "files"|"batches", id, ("content")]
        with st.lock:
            if parts[2] == "files":
                f = st.files.get(parts[3])
                if f is None:
                    return self._send(404, {"error": {"message": f"no file {parts[3]}"}})
            else:
                batch = st.batches.get(parts[3])
                if batch is None:
                    return self._send(404, {"error": {"message": f"no batch {parts[3]}"}})
                st.batch_stats["retrieved"] += 1
        if parts[2] == "files":
            if len(parts) > 4 and parts[4] == "content":
                data = f["data"]
                self.send_response(200)  # type: ignore[attr-defined]
                self.send_header("Content-Type", "application/octet-stream")  # type: ignore[attr-defined]
                self.send_header("Content-Length", str(len(data)))  # type: ignore[attr-defined]
                self.end_headers()  # type: ignore[attr-defined]
                self.wfile.write(data)  # type: ignore[attr-defined]
                return None
            return self._send(200, f["meta"])
        self._advance(batch)
        self._send(200, _public(batch))

    def _advance(self, batch: dict[str, Any]) -> None:
        """Move a batch on: in_progress until due, then answered (or failed / expired, by the faults)."""
        st = self.server.state
        with st.lock:
            if batch["status"] in _TERMINAL or batch.get("_working"):
                return
            # due by the current batch_delay_s, so a test can hold a batch and then release it
            if time.monotonic() < batch["_created"] + st.faults.batch_delay_s:
                batch["status"] = "in_progress"
                return
            batch["_working"] = True
            f = st.faults
            lines = st.files[batch["input_file_id"]]["data"].decode().splitlines()
        total = sum(1 for x in lines if x.strip())
        if f.batch_fail:
            with st.lock:
                fail = {"code": "fake_failure", "message": "batch failed (injected)"}
                batch.update(status="failed", errors={"object": "list", "data": [fail]})
                batch["request_counts"] = {"total": total, "completed": 0, "failed": total}
                st.batch_stats["failed"] += 1
            return
        out, err = run_batch_lines(st, lines, total // 2 if f.batch_expire else None)
        ofile = self._new_file(f"{batch['id']}_output.jsonl", "batch_output",
                               "".join(x + "\n" for x in out).encode()) if out else None
        efile = self._new_file(f"{batch['id']}_error.jsonl", "batch_output",
                               "".join(x + "\n" for x in err).encode()) if err else None
        with st.lock:
            status = "expired" if f.batch_expire else "completed"
            batch["output_file_id"] = ofile["id"] if ofile else None
            batch["error_file_id"] = efile["id"] if efile else None
            batch["status"] = status
            batch["request_counts"] = {"total": total, "completed": len(out), "failed": len(err)}
            st.batch_stats[status] += 1


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------- HTTP


class _Handler(_BatchEndpoints, BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read stdout for the URL only
        pass

    def _send(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj, ensure_ascii=False).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
            pass

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self) -> None:
        st = self.server.state
        if self.path.rstrip("/") == "/stats":
            with st.lock:
                self._send(
                    200,
                    {
                        "requests": st.n,
                        "by_kind": dict(st.by_kind),
                        "attempts_by_kind": dict(st.attempts_by_kind),
                        "status": dict(st.status),
                        "answered": dict(st.answered),
                        "temperatures": dict(st.temperatures),
                        "by_lang": dict(st.by_lang),
                        "auth_ok": st.auth_ok,
                        "embeddings": st.embeddings,
                        "tokens": st.tokens,
                        "cached_tokens": st.cached_tokens,
                        "batches": dict(st.batch_stats),
                        "files": len(st.files),
                        "faults": asdict(st.faults),
                    },
                )
        elif self.path.startswith("/requests/"):  # what an answered request asked (test diagnostics)
            with st.lock:
                req = st.bodies.get(self.path.rstrip("/").rsplit("/", 1)[-1])
            if req is None:
                self._send(404, {"error": {"message": "no answered request with that hash"}})
            else:
                self._send(200, req)
        elif self.path.startswith(("/v1/files/", "/v1/batches/")):
            self._batch_get(self.path.rstrip("/"))
        elif self.path.rstrip("/") == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        st = self.server.state
        path = self.path.rstrip("/")
        if path == "/control":
            new = self._body()
            with st.lock:
                st.faults = Faults(**{**asdict(st.faults), **new})
            self._send(200, asdict(st.faults))
        elif path == "/reset":
            with st.lock:
                st.reset()
            self._send(200, {"ok": True})
        elif path == "/v1/chat/completions":
            self._chat(self._body())
        elif path == "/v1/embeddings":
            self._embeddings(self._body())
        elif path == "/v1/files":
            self._file_upload()
        elif path == "/v1/batches":
            self._batch_create(self._body())
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _embeddings(self, req: dict[str, Any]) -> None:
        inputs = req.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else inputs
        data = []
        for i, text in enumerate(inputs):
            vec = [0.0] * 64
            for w in retrieval_terms(text):
                vec[int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1.0
            norm = sum(v * v for v in vec) ** 0.5 or 1.0
            data.append({"object": "embedding", "index": i, "embedding": [v / norm for v in vec]})
        with self.server.state.lock:
            self.server.state.embeddings += 1
        n = sum(approx_tokens(t) for t in inputs)
        self._send(
            200,
            {
                "object": "list",
                "data": data,
                "model": req.get("model", ""),
                "usage": {"prompt_tokens": n, "total_tokens": n},
            },
        )

    def _chat(self, req: dict[str, Any]) -> None:
        st = self.server.state
        messages = req.get("messages", [])
        system = " ".join(m.get("content", "") for m in messages if m.get("role") == "system")
        user = "\n".join(m.get("content", "") for m in messages if m.get("role") == "user")
        m = re.search(r"Task id: (\w+)", system)
        kind = m.group(1) if m else "unknown"
        body_hash = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:16]
        with st.lock:
            st.n += 1
            n, f = st.n, st.faults
            st.attempts_by_kind[kind] += 1
            now = time.monotonic()
            while st.window and st.window[0] <= now - 60:
                st.window.popleft()
            over_rpm = bool(f.rpm_limit) and len(st.window) >= f.rpm_limit
            if not over_rpm:
                st.window.append(now)
            remaining = max(0, f.rpm_limit - len(st.window)) if f.rpm_limit else 1_000_000
        rl = {
            "x-ratelimit-limit-requests": str(f.rpm_limit or 1_000_000),
            "x-ratelimit-remaining-requests": str(remaining),
        }
        if f.require_key and self.headers.get("Authorization") != f"Bearer {f.require_key}":
            return self._status(401, "invalid api key", rl)
        if f.require_key:
            with st.lock:
                st.auth_ok += 1
        if n <= f.fail_429_first or (f.error_429_every and n % f.error_429_every == 0) or over_rpm:
            ra = {"Retry-After": f"{f.retry_after_s:g}", "retry-after-ms": str(int(f.retry_after_s * 1000))}
            return self._status(429, "rate limit exceeded", {**rl, **ra})
        if f.error_500_every and n % f.error_500_every == 0:
            return self._status(500, "internal error (injected)", rl)
        if _wants_bad_body(f, n, kind):
            return self._bad_body(f.bad_body, n)
        if f.hang_every and n % f.hang_every == 0:
            time.sleep(f.hang_s)
        if f.latency_s:
            time.sleep(f.latency_s)
        rf = req.get("response_format") or {}
        want_json = rf.get("type") in ("json_schema", "json_object")
        if want_json and not f.json_schema:
            return self._status(400, "response_format json_schema is not supported by this server", rl)
        obj = _judge(kind, {k: v for k, v in _BLOCK_RE.findall(user)})
        text = json.dumps(obj, ensure_ascii=False) if want_json else _as_tagged(kind, obj)
        finish = "stop"
        if kind in f.garble_kinds or (f.garble_every and n % f.garble_every == 0) or _garbles(f, kind, user):
            text = "Well, it depends on how you look at it; I would rather not commit to a verdict."
        elif f.truncate_every and n % f.truncate_every == 0:
            text, finish = text[: len(text) // 2], "length"
        pt = sum(approx_tokens(mm.get("content", "")) for mm in messages)
        ct = approx_tokens(text)
        cached = _cached_prefix_tokens(st, messages)
        with st.lock:
            st.status["200"] += 1
            st.count_answer(kind, body_hash, req, system, pt + ct, cached)
        self._send(
            200,
            {
                "id": f"chatcmpl-fake-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": req.get("model", "fake-judge"),
                "choices": [
                    {"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}
                ],
                "usage": _usage(pt, ct, cached),
            },
            rl,
        )

    def _status(self, code: int, msg: str, headers: dict[str, str]) -> None:
        with self.server.state.lock:
            self.server.state.status[str(code)] += 1
        self._send(code, {"error": {"message": msg, "type": "fake_error", "code": code}}, headers)


    # ------------------------------------------------------------------------------- malformed answers
    # HTTP 200 answers a real server or proxy can send that are not a usable chat completion.

    def _bad_body(self, mode: str, n: int) -> None:
        good = json.dumps(
            {
                "id": f"chatcmpl-fake-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": "fake-judge",
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x"}}
                ],
            }
        ).encode()
        content_type = "application/json"
        if mode == "truncated_json":  # a proxy cut the body short
            body = good[: len(good) // 2]
        elif mode == "wrong_content_type":  # an HTML error page from a gateway, with status 200
            body, content_type = b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
        elif mode == "empty_body":
            body = b""
        elif mode == "error_object":  # some servers report overload as a 200 carrying an error object
            body = json.dumps({"error": {"message": "model is overloaded", "type": "server_error"}}).encode()
        elif mode == "no_choices":
            body = json.dumps({"id": f"chatcmpl-{n}", "object": "chat.completion", "choices": []}).encode()
        elif mode == "bad_content":  # the right envelope with a non-text content
            body = good.replace(b'"content": "x"', b'"content": {"score": 7}')
        else:
            raise ValueError(f"unknown bad_body mode {mode!r}; one of {BAD_BODIES}")
        with self.server.state.lock:
            self.server.state.status[f"200-{mode}"] += 1
        try:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


BAD_BODIES = (
    "truncated_json", "wrong_content_type", "empty_body", "error_object", "no_choices", "bad_content"
)


def _garbles(f: Faults, kind: str, user: str) -> bool:
    """Whether this info_extract question is about the one document part marked ``garble_document_with``
    (a deterministic failure of one chunk's extraction, whatever the order of requests)."""
    return kind == "info_extract" and bool(f.garble_document_with) and f.garble_document_with in user


def _wants_bad_body(f: Faults, n: int, kind: str) -> bool:
    """Whether chat request number ``n`` of prompt kind ``kind`` gets the malformed answer ``f.bad_body``."""
    if not f.bad_body or (f.bad_body_kinds and kind not in f.bad_body_kinds):
        return False
    return n % max(1, f.bad_body_every) == 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(
            sys.exc_info()[1], ConnectionError
        ):  # a client that timed out and hung up is normal
            super().handle_error(request, client_address)


def make_server(port: int = 0, faults: Faults | None = None) -> _Server:
    srv = _Server(("127.0.0.1", port), _Handler)
    srv.state = _State(faults or Faults())
    return srv


class FakeJudgeServer:
    """The server as a separate process: ``with FakeJudgeServer(latency_s=0.1) as s: s.url, s.stats()``."""

    def __init__(self, **faults: Any) -> None:
        self.faults = faults
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> FakeJudgeServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "judge.fake_server", "--port", "0", "--config", json.dumps(self.faults)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("URL "):
            self.proc.kill()
            raise RuntimeError(f"fake judge server did not start (got {line!r})")
        self.url = line.split()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.root + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def request(self, body_hash: str) -> dict[str, Any]:
        """The answered request whose body hashes to ``body_hash`` (a key of ``stats()["answered"]``)."""
        return self._call("GET", f"/requests/{body_hash}")

    def control(self, **faults: Any) -> dict[str, Any]:
        return self._call("POST", "/control", faults)

    def reset(self) -> None:
        self._call("POST", "/reset", {})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: pick a free port")
    ap.add_argument("--config", default="{}", help="JSON object of Faults fields")
    ap.add_argument(
        "--run-batch", nargs=2, metavar=("IN", "OUT"), help="answer a Batch-API JSONL offline, then exit"
    )
    args = ap.parse_args(argv)
    if args.run_batch:
        n = run_batch_file(*args.run_batch, Faults(**json.loads(args.config)))
        print(f"answered {n} request(s) into {args.run_batch[1]}", flush=True)
        return
    srv = make_server(args.port, Faults(**json.loads(args.config)))
    print(f"URL http://127.0.0.1:{srv.server_address[1]}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve_forever()


if __name__ == "__main__":
    main()
