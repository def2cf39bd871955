"""Executors: who answers the judge's questions — now, over the wire (``online``), or later, in bulk.

``judge.score --executor online|openai-batch|batch-file``. The scorer's code is the same for all three: it
asks `JudgeClient.ask` per question. With a batch executor the client does not send a cache miss; it hands
``(cache key, request body)`` to a `WaveDriver` and waits. When every scoring task is waiting (the event loop
is quiet and nothing is on the wire), the driver has collected one **wave**: every question that can be asked
without an answer still to come (wave 1: per-prompt chunk extraction, helpfulness, logicality, statement
split; wave 2: the support checks and completeness comparisons those answers unlock; then re-asks of
unparseable answers). A backend answers the wave, the driver resolves the waiting questions, the client stores
each answer in the response cache exactly as an online answer, and the scoring code carries on. So the rows
are the rows an online run makes from the same answers, and a run switched from one executor to another
reuses every cached answer.

Waves are deterministic (the same inputs and cache give the same questions), so a wave's job is named by a
hash of its sorted cache keys. Backends:

- `OpenAIBatchBackend` (``openai-batch``): the OpenAI Batch API through the official SDK — upload the JSONL
  (``/v1/files``), create the batch (``/v1/batches``), poll it with back-off, download the output. The batch
  id is written to ``OUT/batches/batch-<hash>.json`` (fsynced) right after the batch is created, so a killed
  run finds it, polls the same batch and never submits it twice; the downloaded output is kept beside it
  until the answers are in the cache.
- `BatchFileBackend` (``batch-file``): writes ``OUT/batches/wave-<hash>.input.jsonl`` (the Batch API input
  format that ``vllm run-batch`` and other offline runners read), leaves the wave's responses pending (exit 1)
  and reads ``wave-<hash>.output.jsonl`` on the next run.

No API key is ever part of a request body, a batch file or a state file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from judge.answers import Completion, chat_answer_from_body
from judge.config import JudgeConfig
from judge.errors import (
    JudgeFatalError,
    MalformedAnswer,
    RequestRejected,
    SchemaUnsupported,
    TransportExhausted,
    UnusableAnswer,
)
from judge.schema import JudgeInputError
from judge.transport import Transport
from lr_jax.options import option, validate

_T = TypeVar("_T")
EXECUTORS = ("online", "openai-batch", "batch-file")
BATCH_DIR = "batches"  # under the output directory
TERMINAL = ("completed", "failed", "expired", "cancelled")


class RetryableLine(TransportExhausted):
    """A batch line answered 408/409/429/5xx: what the online transport would retry. The driver asks it
    again in a later wave, within the judge's transport budget (``--max-attempts``, ``--retry-budget``);
    past it, the response stays pending like an online call whose budget ran out."""


@dataclass
class ExecutorOptions:
    """How the judge's questions are answered. Each field's default, bounds and help live here only (the
    ``judge.score`` flags are generated from these fields). None of them changes what is asked, so none is
    part of a row's fingerprint: switching executor mid-run reuses every finished row and cached answer."""

    executor: str = option(
        "online",
        choices=EXECUTORS,
        help="online: ask now; openai-batch: waves of OpenAI Batch API jobs (~50%% price); batch-file: "
        "write Batch-API JSONL for vllm run-batch or another offline runner, read its output next run",
    )
    batch_poll_s: float = option(
        10.0, gt=0, flag="--batch-poll", help="first wait between batch status polls, seconds (doubles)"
    )
    batch_poll_max_s: float = option(
        300.0, gt=0, flag="--batch-poll-max", help="longest wait between batch status polls, seconds"
    )
    batch_wait_s: float = option(
        90000.0,
        gt=0,
        flag="--batch-wait",
        help="stop waiting for a batch after this many seconds (it stays in flight; a re-run resumes it)",
    )
    # the OpenAI Batch API takes at most 50,000 requests per batch
    batch_max_requests: int = option(50000, ge=1, help="requests per batch job (larger waves are split)")

    def __post_init__(self) -> None:
        validate(self, JudgeInputError)


def job_id(keys: list[str]) -> str:
    """The name of the job answering these cache keys (sorted): the same questions give the same name."""
    return hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]


def request_line(key: str, params: dict[str, Any]) -> str:
    """One Batch API input line. ``custom_id`` is the cache key, so an answer finds its question."""
    item = {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": params}
    return json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n"


def _prefix_order(keys: list[str], params_of: dict[str, dict[str, Any]]) -> list[str]:
    """The wave's requests ordered by their messages, so that requests sharing a prefix (a kind's static
    system message, then the same chunk, collected information or evidence) are neighbours: a provider's
    prompt cache keeps a prefix only for minutes, and a batch runs roughly in file order."""
    return sorted(keys, key=lambda k: (json.dumps(params_of[k].get("messages"), ensure_ascii=False), k))


def _write_atomic(path: Path, text: str) -> None:
    """Write + fsync a temporary file, then rename: a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def parse_output(
    text: str, keys: set[str], params_of: dict[str, dict[str, Any]], structured: str
) -> dict[str, Completion | BaseException]:
    """Batch API output (and error) lines -> cache key -> the answer, or the exception the online client
    would have raised for that call: `UnusableAnswer` (a 200 that is no chat completion: a failed
    dimension), `RequestRejected` (a 4xx), `SchemaUnsupported` (a 400 about ``response_format`` in auto
    mode: the question is asked again in tagged form next wave), `RetryableLine` (a 408/409/429/5xx: asked
    again in a later wave, within the transport budget), `TransportExhausted` (a per-request error such as
    ``batch_expired``: the response stays pending and a re-run asks again)."""
    out: dict[str, Completion | BaseException] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn line answers nothing; its question is asked again
        cid = item.get("custom_id") if isinstance(item, dict) else None
        if cid not in keys:
            continue
        resp = item.get("response") if isinstance(item.get("response"), dict) else {}
        err = item.get("error")
        code = resp.get("status_code")
        if err:
            msg = err.get("message") if isinstance(err, dict) else err
            c = err.get("code") if isinstance(err, dict) else ""
            out[cid] = TransportExhausted(f"batch request error {c}: {str(msg)[:200]}")
        elif code == 200:
            try:
                out[cid] = chat_answer_from_body(resp.get("body"))
            except MalformedAnswer as e:
                out[cid] = UnusableAnswer(f"batch answer: {e}")
        elif code in (408, 409, 429) or (isinstance(code, int) and code >= 500):
            out[cid] = RetryableLine(f"batch request answered HTTP {code}")
        else:
            body = json.dumps(resp.get("body"))[:300]
            wants_json = "response_format" in params_of.get(cid, {})
            if code == 400 and structured == "auto" and wants_json and "response_format" in body:
                out[cid] = SchemaUnsupported()
            else:
                out[cid] = RequestRejected(f"{code}: {body}")
    return out


class WaveDriver:
    """The client's executor for batch backends: collects questions, answers them a wave at a time.

    A line the backend answers with a transient status (`RetryableLine`) is put back and asked in the next
    wave, like the online transport retries it: at most ``cfg.max_attempts`` asks in all, after a back-off of
    ``cfg.backoff_s`` doubling per ask, the back-offs of one line adding up to at most ``cfg.retry_budget_s``
    (the time a batch itself takes is bounded by ``--batch-wait``, not by this budget: a batch may take
    hours)."""

    def __init__(self, backend: Any, watch: list[Transport], cfg: JudgeConfig) -> None:
        self.backend = backend
        self.watch = watch  # transports whose online calls (embeddings) must finish before a wave is cut
        self.cfg = cfg
        self._pending: dict[str, tuple[str, dict[str, Any], asyncio.Future[Completion]]] = {}
        self._asked: dict[str, tuple[int, float]] = {}  # key -> (asks so far, seconds backed off so far)
        self._backoff = 0.0  # wait before the next wave (it re-asks transient failures)
        self.waves = 0
        self.requests = 0
        self.retried = 0  # lines asked again after a transient failure

    async def submit(self, key: str, kind: str, params: dict[str, Any]) -> Completion:
        """Called by `JudgeClient` for a cache miss: wait for this question's wave to be answered."""
        fut: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
        self._pending[key] = (kind, params, fut)
        return await fut

    async def _quiet(self, task: asyncio.Future[Any]) -> None:
        """Return once every scoring task waits on an unanswered question (or the scoring is done). The
        scorer's own awaits between questions are on futures, never on I/O (BM25 is synchronous), so a few
        hundred idle turns of the loop with no new question mean nothing else will come; online calls
        (embeddings) are waited for, so a wave never depends on timing."""
        last, stable = -1, 0
        while stable < 200 and not task.done():
            await asyncio.sleep(0)
            if any(c.on_wire for c in self.watch):
                last, stable = -1, 0
                await asyncio.sleep(0.005)
                continue
            n = len(self._pending)
            stable = stable + 1 if n == last else 0
            last = n

    async def drive(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` (the scoring), answering its questions wave by wave."""
        task = asyncio.ensure_future(coro)
        try:
            while True:
                await self._quiet(task)
                if task.done():
                    release = getattr(self.backend, "release", None)
                    if release is not None:
                        release()  # every answer read is in the response cache now: none is needed again
                    return task.result()
                if not self._pending:
                    await asyncio.sleep(0.005)
                    continue
                if self._backoff:
                    await asyncio.sleep(self._backoff)
                    self._backoff = 0.0
                await self._answer_wave()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _answer_wave(self) -> None:
        """Answer the questions collected so far; put the transiently failed ones back for the next wave."""
        wave, self._pending = self._pending, {}
        self.waves += 1
        self.requests += len(wave)
        for key in wave:
            n, waited = self._asked.get(key, (0, 0.0))
            self._asked[key] = (n + 1, waited)
        try:
            results = await self.backend.answer({k: (kind, p) for k, (kind, p, _) in wave.items()})
        except TransportExhausted as e:  # the whole wave could not be answered now: all pending
            results = {k: e for k in wave}
        for key, (kind, params, fut) in wave.items():
            if fut.done():
                continue
            r = results.get(key)
            if r is None:
                r = TransportExhausted("no answer for this request in the batch output")
            if isinstance(r, RetryableLine):
                n, waited = self._asked[key]
                wait = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** (n - 1))
                if n < self.cfg.max_attempts and waited + wait <= self.cfg.retry_budget_s:
                    self._asked[key] = (n, waited + wait)
                    self._pending[key] = (kind, params, fut)  # asked again in the next wave
                    self._backoff = max(self._backoff, wait)
                    self.retried += 1
                    continue
                r = RetryableLine(f"{r}; gave up after {n} batch attempts")
            if isinstance(r, BaseException):
                fut.set_exception(r)
            else:
                fut.set_result(r)


class OpenAIBatchBackend:
    """Answers a wave with OpenAI Batch API jobs, through the client's SDK connection (same key, same
    retries for the file and batch calls)."""

    def __init__(self, transport: Transport, run_dir: Path, opts: ExecutorOptions) -> None:
        self.transport, self.dir, self.opts = transport, run_dir, opts
        self.submitted = 0  # batches created by this run
        self.resumed = 0  # batches found in flight in the run directory and polled again
        self.polls = 0
        self._read: list[Path] = []  # downloaded outputs whose answers the scoring is taking in

    def release(self) -> None:
        """Delete the outputs read so far: the driver calls this once every answer in them has been handed
        to the scoring (and stored in the response cache), so none is needed to resume. A later wave
        with the same questions (the re-ask of lines that all failed) then makes a new batch instead of
        reading the old failures again."""
        for path in self._read:
            path.unlink(missing_ok=True)
        self._read.clear()

    async def _call(self, what: str, fn: Callable[[], Awaitable[Any]]) -> Any:
        try:
            resp, handle = await self.transport.call(what, 0, fn)
        except JudgeFatalError as e:
            raise JudgeFatalError(
                f"{e} (does this server have the Batch API? vLLM's server has none: use --executor "
                "batch-file and vllm run-batch)"
            ) from None
        self.transport.settle(handle, 0)
        return resp

    async def answer(self, wave: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        self.release()  # the previous wave's answers are all in the response cache by now
        keys = sorted(wave)
        n = self.opts.batch_max_requests
        parts = [keys[i : i + n] for i in range(0, len(keys), n)]
        out: dict[str, Any] = {}
        done = await asyncio.gather(*(self._job(p, wave) for p in parts), return_exceptions=True)
        for part, res in zip(parts, done, strict=True):
            if isinstance(res, TransportExhausted):  # that job gave no answers: its questions stay pending
                out.update(dict.fromkeys(part, res))
            elif isinstance(res, BaseException):
                raise res
            else:
                out.update(res)
        return out

    async def _job(self, keys: list[str], wave: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        sdk = self.transport.sdk
        jid = job_id(keys)
        self.dir.mkdir(parents=True, exist_ok=True)
        state_path = self.dir / f"batch-{jid}.json"
        out_path = self.dir / f"batch-{jid}.output.jsonl"
        params_of = {k: wave[k][1] for k in keys}
        structured = self.transport.cfg.structured
        if out_path.exists():  # downloaded before a kill: the answers are here, nothing to pay or wait for
            self._read.append(out_path)
            return parse_output(out_path.read_text(encoding="utf-8"), set(keys), params_of, structured)
        if state_path.exists():
            batch_id = json.loads(state_path.read_text())["batch_id"]
            self.resumed += 1
            print(f"judge.score: resuming batch {batch_id} ({len(keys)} requests)", file=sys.stderr)
        else:
            data = "".join(request_line(k, params_of[k]) for k in _prefix_order(keys, params_of)).encode()
            f = await self._call(
                "batch upload",
                lambda: sdk.files.create(file=(f"judge-{jid}.jsonl", data), purpose="batch"),
            )
            b = await self._call(
                "batch create",
                lambda: sdk.batches.create(
                    input_file_id=f.id,
                    endpoint="/v1/chat/completions",
                    completion_window="24h",
                    metadata={"lr_jax_job": jid},
                ),
            )
            batch_id = b.id
            # before anything else: a kill from here on resumes this batch instead of paying for it again
            state = {"batch_id": batch_id, "input_file_id": f.id, "requests": len(keys), "job": jid}
            _write_atomic(state_path, json.dumps({**state, "created": time.time()}) + "\n")
            self.submitted += 1
        delay, deadline = self.opts.batch_poll_s, time.monotonic() + self.opts.batch_wait_s
        while True:
            b = await self._call("batch poll", lambda: sdk.batches.retrieve(batch_id))
            self.polls += 1
            if b.status in TERMINAL:
                break
            if time.monotonic() + delay > deadline:
                raise TransportExhausted(
                    f"batch {batch_id} is still {b.status} after --batch-wait {self.opts.batch_wait_s:g} s; "
                    "it stays in flight: re-run to resume polling it"
                )
            await asyncio.sleep(delay)
            delay = min(self.opts.batch_poll_max_s, delay * 2)
        if not b.output_file_id and not b.error_file_id:  # failed / cancelled before answering anything
            state_path.unlink(missing_ok=True)  # nothing was answered: the next run submits it again
            errs = getattr(getattr(b, "errors", None), "data", None) or []
            why = "; ".join(f"{e.code}: {e.message}" for e in errs if e is not None)[:300]
            raise TransportExhausted(
                f"batch {batch_id} {b.status}{': ' + why if why else ''}; re-run to submit again"
            )
        text = ""
        for fid in (b.output_file_id, b.error_file_id):
            if fid:
                content = await self._call("batch download", lambda fid=fid: sdk.files.content(fid))
                text += (
                    content.text if content.text.endswith("\n") or not content.text else content.text + "\n"
                )
        _write_atomic(out_path, text)  # a kill before the cache is filled reads this instead of polling
        self._read.append(out_path)
        state_path.unlink(missing_ok=True)
        return parse_output(text, set(keys), params_of, structured)


class BatchFileBackend:
    """Answers a wave from a file an offline runner wrote (``vllm run-batch -i IN -o OUT``)."""

    def __init__(self, run_dir: Path, structured: str) -> None:
        self.dir, self.structured = run_dir, structured
        self.written: list[tuple[Path, Path]] = []  # (input, expected output) this run is waiting for
        self.read = 0

    async def answer(self, wave: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        keys = sorted(wave)
        jid = job_id(keys)
        self.dir.mkdir(parents=True, exist_ok=True)
        inp, out = self.dir / f"wave-{jid}.input.jsonl", self.dir / f"wave-{jid}.output.jsonl"
        params_of = {k: wave[k][1] for k in keys}
        if out.exists():
            self.read += 1
            return parse_output(out.read_text(encoding="utf-8"), set(keys), params_of, self.structured)
        if not inp.exists():
            lines = [request_line(k, params_of[k]) for k in _prefix_order(keys, params_of)]
            _write_atomic(inp, "".join(lines))
        self.written.append((inp, out))
        raise TransportExhausted(
            f"batch-file: {len(keys)} request(s) are in {inp}; answer them (e.g. vllm run-batch -i {inp} -o "
            f"{out}) and re-run judge.score"
        )


def make_driver(
    opts: ExecutorOptions, transport: Transport, out_dir: Path, watch: list[Transport]
) -> WaveDriver | None:
    """The `WaveDriver` for ``opts.executor`` (None for online), to pass to `JudgeClient` as its
    ``executor`` together with the same ``transport`` (the Batch API calls go through it)."""
    if opts.executor == "online":
        return None
    run_dir = out_dir / BATCH_DIR
    if opts.executor == "openai-batch":
        backend: Any = OpenAIBatchBackend(transport, run_dir, opts)
    else:
        backend = BatchFileBackend(run_dir, transport.cfg.structured)
    return WaveDriver(backend, watch, transport.cfg)


def driver_summary(driver: WaveDriver | None) -> dict[str, Any]:
    """What the executor did, for ``summary.json``."""
    if driver is None:
        return {"name": "online"}
    b = driver.backend
    out: dict[str, Any] = {"waves": driver.waves, "requests": driver.requests, "retried": driver.retried}
    if isinstance(b, OpenAIBatchBackend):
        out.update(
            name="openai-batch", batches_submitted=b.submitted, batches_resumed=b.resumed, polls=b.polls
        )
    else:
        out.update(name="batch-file", files_read=b.read, waiting_for=[str(o) for _, o in b.written])
    return out
