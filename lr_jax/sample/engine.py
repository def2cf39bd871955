"""`run_engine`: sample every missing row of a Prompts file through an OpenAI-compatible inference engine.

`python -m lr_jax.sample --engine openai --base-url URL --served-model NAME ...` writes the same Samples
JSONL rows as the JAX sampler (`lr_jax.sample.sampling`): id ``<prompt>-<k>``, prompt_id, query, response,
sampler (model, temperature, top_p, seed and ``engine: "openai"``), finish_reason, num_tokens, and
``logprobs`` with ``--logprobs``. The engine (vLLM, vllm-tpu, SGLang, ...) decodes; this process holds no
model, only the shared client machinery (`lr_jax.openai_client`: concurrency, rate limits, retries within a
budget — the judge's own transport).

The prompt is one user message ``context + "\\n\\n" + query`` (`lr_jax.data.tokenization.prompt_text`, the
message the JAX sampler's chat template gets); the engine applies the model's chat template. A prompt's
missing samples are asked in one request with ``n`` = their count; a server that refuses ``n`` > 1 (or
answers fewer choices) is asked once per sample instead (said once on stderr). Greedy (temperature 0) asks
once per prompt: every sample is that one answer (as with the JAX sampler; vLLM refuses ``n`` > 1 there).
Each request carries a seed derived from (``--seed``, prompt id, first sample asked): a re-run asks the same
questions, but whether the engine then answers byte-identically is the engine's business.
``num_tokens`` is the engine's count of generated tokens (vLLM counts the stop token; the JAX sampler does
not): from the choice's log-probs, else the usage of a one-choice answer. With ``n`` > 1 log-probs are always
requested, so each choice's count is known; they are written only with ``--logprobs``.

Rows are appended and fsynced per prompt, as its answer arrives (so the file's row order is the engine's
finishing order); a re-run skips the ids already written (a torn last line is cut first). A prompt the engine
rejects (HTTP 400, e.g. longer than its --max-model-len) is skipped, counted and named on stderr. The server
refusing us (a wrong --served-model: 404; a bad key: 401) or never answering within the retry budget stops
the run with one ``error:`` line naming the URL and the model; what was written stays.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from lr_jax.data.tokenization import prompt_text
from lr_jax.openai_client import (
    RequestRejected,
    ServerRefused,
    Transport,
    TransportExhausted,
    WireOptions,
    read_api_key,
)
from lr_jax.sample.files import append_fsync, check_output_file, pending
from lr_jax.sample.options import SampleError, SampleOptions, validate_options

MAX_REQUEST_SEED = 2**31 - 1  # engines take a signed seed; some (llama.cpp) only 32 bits


@dataclass
class EngineStats:
    """What happened to the prompts (printed as JSON at the end), like `lr_jax.sample.Stats`, and what the
    engine was asked and answered."""

    prompts: int = 0
    already_done: int = 0
    sampled_prompts: int = 0
    rows_written: int = 0
    torn_bytes_dropped: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    n_refused: bool = False  # the server did not give n choices: one request per sample
    rejected: list[str] = field(default_factory=list)  # prompt ids the engine answered with a 4xx


@dataclass
class Choice:
    """One sample as the engine answered it."""

    text: str
    finish_reason: str
    num_tokens: int | None
    logprobs: list[float] | None


def request_seed(seed: int, prompt_id: str, k: int) -> int:
    """The seed sent with the request whose first sample is k of `prompt_id` (a stable hash, 31 bits)."""
    digest = hashlib.sha256(f"{seed}\0{prompt_id}\0{k}".encode()).hexdigest()
    return int(digest[:8], 16) & MAX_REQUEST_SEED


def read_choices(resp: Any) -> list[Choice]:
    """The choices of a chat completion, in index order; a body of another shape raises (and is retried)."""
    choices = sorted(resp.choices, key=lambda c: c.index)
    if not choices:
        raise ValueError("the answer has no choices")
    usage = getattr(resp, "usage", None)
    out = []
    for c in choices:
        text = c.message.content if c.message is not None else None
        if text is not None and not isinstance(text, str):
            raise ValueError(f"choice {c.index}: content is {type(text).__name__}, not text")
        content = getattr(c.logprobs, "content", None) if c.logprobs is not None else None
        lps = [float(t.logprob) for t in content] if content is not None else None
        count = len(lps) if lps is not None else (
            usage.completion_tokens if usage is not None and len(choices) == 1 else None)
        out.append(Choice(text or "", c.finish_reason or "stop", count, lps))
    return out


class EngineSampler:
    """Asks the engine for a prompt's missing samples (through one shared `Transport`)."""

    def __init__(self, args: SampleOptions, transport: Transport, stats: EngineStats) -> None:
        self.args, self.transport, self.stats = args, transport, stats
        self.use_n = True

    async def ask(self, messages: list[dict[str, str]], n: int, seed: int) -> list[Choice]:
        a = self.args
        params: dict[str, Any] = {"model": a.served_model, "messages": messages, "temperature": a.temperature,
                                  "top_p": a.top_p, "max_tokens": a.max_new_tokens, "seed": seed}
        if n > 1:
            params["n"] = n
        if a.logprobs or n > 1:  # n > 1: the only per-choice token count (usage sums the choices)
            params["logprobs"] = True
        extra = {"top_k": a.top_k} if a.top_k else None  # vLLM's / SGLang's extension of the API

        async def call() -> tuple[list[Choice], Any]:
            resp = await self.transport.sdk.chat.completions.create(**params, extra_body=extra)
            return read_choices(resp), resp.usage

        est = sum(len(m["content"]) for m in messages) // 4 + n * a.max_new_tokens
        (choices, usage), handle = await self.transport.call("sample", est, call)
        self.stats.requests += 1
        pt = getattr(usage, "prompt_tokens", 0) or 0
        ct = getattr(usage, "completion_tokens", 0) or 0
        self.stats.prompt_tokens += pt
        self.stats.completion_tokens += ct
        self.transport.settle(handle, pt + ct)
        return choices

    async def sample(self, prompt: dict[str, Any], missing: list[int]) -> dict[int, Choice] | None:
        """Sample k -> its choice for every k in `missing`; None if the engine rejected the prompt."""
        seed, pid = self.args.seed, prompt["id"]
        messages = [{"role": "user", "content": prompt_text(prompt["context"], prompt["query"])}]
        got: dict[int, Choice] = {}
        if self.args.temperature == 0:  # greedy: every sample is the one answer (vLLM refuses n > 1 then)
            try:
                c = (await self.ask(messages, 1, request_seed(seed, pid, missing[0])))[0]
            except RequestRejected as e:
                return self.reject(pid, e)
            return dict.fromkeys(missing, c)
        if self.use_n and len(missing) > 1:
            try:
                choices = await self.ask(messages, len(missing), request_seed(seed, pid, missing[0]))
                got = dict(zip(missing, choices, strict=False))
                if len(choices) < len(missing):
                    self.refuse_n(f"it answered {len(choices)} choice(s) for n={len(missing)}")
            except RequestRejected as e:
                rejected_n = str(e)  # n, or this prompt itself: asking for one sample tells which
                got = {}
            else:
                rejected_n = ""
        else:
            rejected_n = ""
        for k in [k for k in missing if k not in got]:
            try:
                got[k] = (await self.ask(messages, 1, request_seed(seed, pid, k)))[0]
            except RequestRejected as e:
                return self.reject(pid, e)
            if rejected_n:
                self.refuse_n(f"n={len(missing)} was rejected: {rejected_n}")
                rejected_n = ""
        return got

    def reject(self, pid: str, e: RequestRejected) -> None:
        self.stats.rejected.append(pid)
        print(f"lr_jax.sample: the engine rejected prompt {pid!r}: {e}", file=sys.stderr)

    def refuse_n(self, why: str) -> None:
        if self.use_n:
            self.use_n, self.stats.n_refused = False, True
            print(f"lr_jax.sample: {self.args.base_url} does not give n choices per request ({why}); "
                  "asking once per sample from now on", file=sys.stderr)


def row(prompt: dict[str, Any], k: int, c: Choice, sampler: dict[str, Any], logprobs: bool) -> str:
    r: dict[str, Any] = {"id": f"{prompt['id']}-{k}", "prompt_id": prompt["id"], "query": prompt["query"],
                         "response": c.text, "sampler": sampler, "finish_reason": c.finish_reason,
                         "num_tokens": c.num_tokens}
    if logprobs:
        r["logprobs"] = c.logprobs
    # allow_nan=False: a NaN / Infinity would make the line unreadable JSON for judge.score.
    return json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n"


def run_engine(args: SampleOptions) -> EngineStats:
    """Sample every missing row of `args.prompts` into `args.out` through the engine at `args.base_url`."""
    validate_options(args)
    out = check_output_file(args.out, args.prompts)
    sampler = {"model": args.model_name or args.served_model, "temperature": args.temperature,
               "top_p": args.top_p, "seed": args.seed, "engine": "openai"}
    if args.top_k:
        sampler["top_k"] = args.top_k
    stats = EngineStats()
    todo = pending(args, out, sampler, stats)
    if not todo:
        return stats
    key = read_api_key(None, args.api_key_file, SampleError)
    wire = WireOptions(base_url=str(args.base_url), concurrency=args.concurrency,
                       timeout_s=args.request_timeout, max_attempts=args.max_attempts,
                       retry_budget_s=args.retry_budget)
    out.parent.mkdir(parents=True, exist_ok=True)
    where = f"--base-url {args.base_url} --served-model {args.served_model!r}"
    try:
        asyncio.run(_sample_all(args, wire, key, todo, sampler, out, stats))
    except ServerRefused as e:
        raise SampleError(f"{where}: {e}") from None
    except TransportExhausted as e:  # UnusableAnswer included
        raise SampleError(f"{where}: no usable answer within the retry budget (--max-attempts "
                          f"{args.max_attempts}, --retry-budget {args.retry_budget:g} s): {e}") from None
    if stats.rejected:
        print(f"lr_jax.sample: the engine rejected {len(stats.rejected)} prompt(s): {stats.rejected[:10]}",
              file=sys.stderr)
    return stats


async def _sample_all(args: SampleOptions, wire: WireOptions, key: str, todo: list[tuple[dict[str, Any],
                      list[int]]], sampler: dict[str, Any], out: Any, stats: EngineStats) -> None:
    from tqdm import tqdm

    transport = Transport(wire, key, server="engine")
    engine = EngineSampler(args, transport, stats)

    async def one(p: dict[str, Any], missing: list[int]) -> tuple[dict[str, Any], dict[int, Choice] | None]:
        return p, await engine.sample(p, missing)

    bar = tqdm(total=stats.prompts, initial=stats.already_done, desc="sample", unit="prompt",
               dynamic_ncols=True, file=sys.stderr, disable=args.no_progress)
    tasks = [asyncio.ensure_future(one(p, missing)) for p, missing in todo]
    try:
        for fut in asyncio.as_completed(tasks):
            p, got = await fut
            if got is not None:
                append_fsync(out, [row(p, k, got[k], sampler, args.logprobs) for k in sorted(got)])
                stats.rows_written += len(got)
                stats.sampled_prompts += 1
            bar.update(1)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bar.close()
        await transport.close()
