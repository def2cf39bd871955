"""A real OpenAI-compatible HTTP server with a deterministic scripted judge, for tests, benches and demos.

    python -m judge.fake_server --port 0 [--config '{"latency_s": 2}']   # prints "URL http://127.0.0.1:PORT/v1"

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/embeddings`` (hashed bag of words), ``GET /stats``
(request counts per prompt kind, statuses, answered request hashes), ``POST /control`` (merge new fault
settings), ``POST /reset`` (zero the counters).

The scripted judge recognises each of our prompt kinds by the "Task id: <kind>" in the system message and
answers from word overlap, so its scores mean something: statements are the response's sentences, support is
the share of a statement's words found in the evidence, completeness is the share of collected words the
response covers. It answers JSON when ``response_format`` asks for it (or 400s if ``json_schema`` is off),
else tagged text.

Faults (`Faults`, all deterministic by request number): 429 with Retry-After, 500, hangs longer than the
client timeout, garbled or truncated completions, per-kind garbling, latency, a server-side RPM limit, a
required key.
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
from collections import Counter, deque
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
        self.temperatures: Counter[str] = Counter()
        self.by_lang: Counter[str] = Counter()  # 'kind:en' / 'kind:zh' by the prompt's language
        self.auth_ok = 0
        self.window: deque[float] = deque()
        self.embeddings = 0
        self.tokens = 0


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
        q, r = _words(query), _words(response)
        cover = len(q & r) / max(1, len(q))
        length = min(1.0, len(r) / 40)
        score = round(10 * (0.5 * cover + 0.5 * length), 1)
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


# ---------------------------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
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
                        "faults": asdict(st.faults),
                    },
                )
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
        if kind in f.garble_kinds or (f.garble_every and n % f.garble_every == 0):
            text = "Well, it depends on how you look at it; I would rather not commit to a verdict."
        elif f.truncate_every and n % f.truncate_every == 0:
            text, finish = text[: len(text) // 2], "length"
        pt = sum(approx_tokens(mm.get("content", "")) for mm in messages)
        ct = approx_tokens(text)
        with st.lock:
            st.status["200"] += 1
            st.by_kind[kind] += 1
            st.answered[body_hash] += 1
            st.temperatures[str(req.get("temperature"))] += 1
            st.by_lang[f"{kind}:{detect_lang(system)}"] += 1
            st.tokens += pt + ct
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
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
            },
            rl,
        )

    def _status(self, code: int, msg: str, headers: dict[str, str]) -> None:
        with self.server.state.lock:
            self.server.state.status[str(code)] += 1
        self._send(code, {"error": {"message": msg, "type": "fake_error", "code": code}}, headers)


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

    def control(self, **faults: Any) -> dict[str, Any]:
        return self._call("POST", "/control", faults)

    def reset(self) -> None:
        self._call("POST", "/reset", {})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: pick a free port")
    ap.add_argument("--config", default="{}", help="JSON object of Faults fields")
    args = ap.parse_args(argv)
    srv = make_server(args.port, Faults(**json.loads(args.config)))
    print(f"URL http://127.0.0.1:{srv.server_address[1]}/v1", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve_forever()


if __name__ == "__main__":
    main()
