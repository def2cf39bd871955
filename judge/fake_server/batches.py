"""The OpenAI Files and Batches endpoints of the fake server, and the offline runner (``--run-batch``, like
``vllm run-batch``): the Batch API wire format, answered by the scripted judge (`judge.fake_server.scripted`)
with the same text and usage as online, without the transport faults (a batch has its own:
``batch_delay_s``, ``batch_fail``, ``batch_expire``, ``batch_500_fraction``)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import TYPE_CHECKING, Any

from judge.chunking import approx_tokens
from judge.fake_server.faults import Faults, garbles
from judge.fake_server.scripted import BLOCK_RE, GARBLE, as_tagged, scripted_answer
from judge.fake_server.state import ServerState, cached_prefix_tokens, usage_object

if TYPE_CHECKING:
    from judge.fake_server.server import FakeHTTPServer

_TERMINAL = ("completed", "failed", "expired", "cancelled")


def scripted_chat(st: ServerState, req: dict[str, Any], n: int) -> tuple[int, dict[str, Any]]:
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
    obj = scripted_answer(kind, {k: v for k, v in BLOCK_RE.findall(user)})
    text = json.dumps(obj, ensure_ascii=False) if want_json else as_tagged(kind, obj)
    if kind in f.garble_kinds or garbles(f, kind, user):
        text = GARBLE
    pt = sum(approx_tokens(mm.get("content", "")) for mm in messages)
    ct = approx_tokens(text)
    cached = cached_prefix_tokens(st, messages)
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
        "usage": usage_object(pt, ct, cached),
    }


def batch_line_fails(st: ServerState, cid: str) -> bool:
    """Whether this ask of the batch line ``cid`` gets a 500 (``batch_500_fraction``): drawn from a hash of
    the line and how often it was asked before, so deterministic, and independent for each re-ask."""
    with st.lock:
        fraction = st.faults.batch_500_fraction
        if not fraction:
            return False
        k = st.batch_asks[cid]
        st.batch_asks[cid] += 1
        draw = int(hashlib.sha256(f"{cid}:{k}".encode()).hexdigest()[:8], 16) / 2**32
        if draw < fraction:
            st.batch_stats["500"] += 1
            return True
    return False


def run_batch_lines(
    st: ServerState, lines: list[str], limit: int | None = None
) -> tuple[list[str], list[str]]:
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
        if batch_line_fails(st, str(cid)):
            body = {"error": {"message": "internal error (injected)", "type": "fake_error", "code": 500}}
            resp = {"status_code": 500, "request_id": f"req_{i}", "body": body}
            line_out = {"id": f"batch_req_{i}", "custom_id": cid, "response": resp, "error": None}
            out.append(json.dumps(line_out))
            continue
        code, body = scripted_chat(st, item.get("body") or {}, i)
        resp = {"status_code": code, "request_id": f"req_{i}", "body": body}
        out.append(json.dumps({"id": f"batch_req_{i}", "custom_id": cid, "response": resp, "error": None},
                              ensure_ascii=False))
    return out[::-1], err


def run_batch_file(src: str, dst: str, faults: Faults | None = None) -> int:
    """``python -m judge.fake_server --run-batch IN OUT``: an offline runner like ``vllm run-batch -i IN -o
    OUT``, answering with the scripted judge. Returns the number of requests answered."""
    st = ServerState(faults or Faults())
    with open(src, encoding="utf-8") as fin:
        out, _ = run_batch_lines(st, fin.read().splitlines())
    with open(dst, "w", encoding="utf-8") as fout:
        fout.write("".join(line + "\n" for line in out))
    return len(out)


class BatchEndpoints:
    """``POST /v1/files`` (multipart), ``GET /v1/files/{id}`` and ``/content``, ``POST /v1/batches``,
    ``GET /v1/batches/{id}``. A batch is answered when it is first retrieved after ``batch_delay_s``."""

    server: FakeHTTPServer
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
