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

Modules: `faults` (what goes wrong), `scripted` (the scripted judge: where every answer comes from), `state`
(counters, prompt cache), `http` (the endpoints), `batches` (Files/Batches and the offline runner),
`process` (`FakeJudgeServer`: the server as a subprocess), `cli`.
"""

from judge.fake_server.batches import run_batch_file, run_batch_lines, scripted_chat
from judge.fake_server.faults import BAD_BODIES, Faults
from judge.fake_server.process import FakeJudgeServer
from judge.fake_server.scripted import EVAL_SCALES, UNRATEABLE, scripted_answer
from judge.fake_server.server import make_server

__all__ = ["BAD_BODIES", "EVAL_SCALES", "UNRATEABLE", "FakeJudgeServer", "Faults", "make_server",
           "run_batch_file", "run_batch_lines", "scripted_answer", "scripted_chat"]
