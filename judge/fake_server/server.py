"""The fake server's HTTP side: routes, the online chat endpoint with its transport faults (429, 500,
hangs, garbling, truncation, malformed 200 bodies, an RPM limit, a required key), embeddings, stats and
control. Answers come from `judge.fake_server.scripted`; batches from `judge.fake_server.batches`."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from judge.chunking import approx_tokens, retrieval_terms
from judge.fake_server.batches import BatchEndpoints
from judge.fake_server.faults import BAD_BODIES, Faults, garbles, wants_bad_body
from judge.fake_server.policy import policy_answer
from judge.fake_server.scripted import BLOCK_RE, GARBLE, as_tagged, scripted_answer
from judge.fake_server.state import ServerState, cached_prefix_tokens, usage_object


class Handler(BatchEndpoints, BaseHTTPRequestHandler):
    server: FakeHTTPServer
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
            names = st.faults.served_models or ["fake-judge"]
            self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in names]})
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
        if f.served_models and req.get("model") not in f.served_models:  # vLLM's answer to a wrong name
            return self._status(404, f"The model `{req.get('model')}` does not exist.", rl)
        if wants_bad_body(f, n, kind):
            return self._bad_body(f.bad_body, n)
        if f.hang_every and n % f.hang_every == 0:
            time.sleep(f.hang_s)
        if f.latency_s:
            time.sleep(f.latency_s)
        if kind == "unknown" and not system:  # no judge prompt: a sampling request (`policy`)
            return self._policy(req, n, body_hash, rl)
        rf = req.get("response_format") or {}
        want_json = rf.get("type") in ("json_schema", "json_object")
        if want_json and not f.json_schema:
            return self._status(400, "response_format json_schema is not supported by this server", rl)
        obj = scripted_answer(kind, {k: v for k, v in BLOCK_RE.findall(user)})
        text = json.dumps(obj, ensure_ascii=False) if want_json else as_tagged(kind, obj)
        finish = "stop"
        if kind in f.garble_kinds or (f.garble_every and n % f.garble_every == 0) or garbles(f, kind, user):
            text = GARBLE
        elif f.truncate_every and n % f.truncate_every == 0:
            text, finish = text[: len(text) // 2], "length"
        pt = sum(approx_tokens(mm.get("content", "")) for mm in messages)
        ct = approx_tokens(text)
        cached = cached_prefix_tokens(st, messages)
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
                "usage": usage_object(pt, ct, cached),
            },
            rl,
        )

    def _policy(self, req: dict[str, Any], n: int, body_hash: str, rl: dict[str, str]) -> None:
        """A sampling request answered by the scripted policy (`judge.fake_server.policy`)."""
        st = self.server.state
        if int(req.get("n") or 1) > 1 and not st.faults.accept_n:
            return self._status(400, "n > 1 is not supported by this server", rl)
        chars = sum(len(str(m.get("content", ""))) for m in req.get("messages", []))
        if st.faults.max_prompt_chars and chars > st.faults.max_prompt_chars:
            return self._status(400, f"This model's maximum context length is {st.faults.max_prompt_chars} "
                                f"characters. However, you requested {chars} characters.", rl)
        choices, pt, ct = policy_answer(req)
        with st.lock:
            st.status["200"] += 1
            st.count_answer("policy", body_hash, req, "", pt + ct, 0)
        self._send(200, {"id": f"chatcmpl-fake-{n}", "object": "chat.completion", "created": int(time.time()),
                         "model": req.get("model", ""), "choices": choices, "usage": usage_object(pt, ct, 0)},
                   rl)

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


class FakeHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(
            sys.exc_info()[1], ConnectionError
        ):  # a client that timed out and hung up is normal
            super().handle_error(request, client_address)


def make_server(port: int = 0, faults: Faults | None = None) -> FakeHTTPServer:
    srv = FakeHTTPServer(("127.0.0.1", port), Handler)
    srv.state = ServerState(faults or Faults())
    return srv
