"""`lr_jax.sample`'s options: one dataclass, from which the CLI's flags, ``--help`` and checks are made.

`SampleOptions` is the sampler's API (`lr_jax.sample.run(options)`) and the loop's ``config.sample``
section: every default, bound and help text is written once, here (`lr_jax.options.option`). Constructing
one validates it (finite numbers, in range, seeds 32-bit) before any file is read; the error names the flag
and the value, ``--temperature nan: must be ...``. Limits that depend on the model (max_position_embeddings,
num_heads) are checked from its config before the weights load (`lr_jax.sample.sampling.run`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any

from lr_jax.errors import LrJaxError
from lr_jax.options import check_number, flag_of, option

# Below this a temperature pushes |logits| / T past the -1e30 that top-k / top-p write over excluded tokens
# (or past float32), so excluded tokens would be sampled; 0 (greedy) is the way to ask for "no randomness".
MIN_TEMPERATURE = 1e-6
MAX_SEED = 2**32 - 1  # jax.random.key keeps 32 bits: seed 2**32 would silently repeat seed 0
MAX_INT32 = 2**31 - 1  # rows, positions and token counts are int32 on the device
ENGINES = ("jax", "openai")  # who decodes: this process, or an OpenAI-compatible inference engine
# how an --engine openai run is told apart from a JAX one: not decoding settings of the loop's config.sample
ENGINE_FIELDS = ("engine", "base_url", "served_model", "api_key_file", "concurrency", "request_timeout",
                 "max_attempts", "retry_budget")


class SampleError(LrJaxError, ValueError):
    """Bad input or output file for sampling; the message names the file, line and field."""


def one_line(message: str) -> str:
    """A library's multi-line message (transformers' tokenizer errors) folded onto the one error line."""
    return " ".join(message.split())


@dataclass(frozen=True)
class SampleOptions:
    """What `lr_jax.sample.run` does: the model, the files and how to decode."""

    # keyword-only so it can have a default ("": none) before the required fields; --engine jax needs it
    model: str = option("", kw_only=True,
                        help="lr_jax dir (model_config.json) or HF dir (config.json); --engine jax")
    prompts: str = option(help="Prompts JSONL (id, context, query); local or gs://")
    out: str = option(help="Samples JSONL to append to (local); resumed if it exists")
    tokenizer: str | None = option(None, help="tokenizer dir (default MODEL/tokenizer, else MODEL)")
    model_name: str | None = option(None, help="name recorded in sampler.model (default: dir name)")
    num_samples: int = option(10, ge=1, le=MAX_INT32, help="responses per prompt")
    temperature: float = option(1.0, ge=0, help=f"0 = greedy; else >= {MIN_TEMPERATURE:g}")
    top_p: float = option(1.0, gt=0, le=1, help="nucleus sampling mass")
    top_k: int = option(0, ge=0, le=MAX_INT32, help="0 = off")
    max_new_tokens: int = option(1024, ge=1, le=MAX_INT32, help="tokens generated per response at most")
    max_prompt_tokens: int = option(
        0, ge=0, le=MAX_INT32,
        help="middle-truncate contexts to this (0: max_position_embeddings - max_new_tokens)")
    batch_size: int = option(1, ge=1, le=MAX_INT32, help="prompts per prefill (rows = this x num-samples)")
    pad_to: int = option(256, ge=1, le=MAX_INT32, help="round prompt length up (fewer recompilations)")
    seed: int = option(0, ge=0, le=MAX_SEED, help="sample k of prompt p uses the key (seed, p, k)")
    mesh: str | None = option(
        None, help="DATA,FSDP,TENSOR mesh (default: all local devices on DATA; 1,1,1 = one device)")
    # --engine openai (lr_jax.sample.engine): an OpenAI-compatible inference engine decodes instead
    engine: str = option("jax", choices=ENGINES,
                         help="jax: decode --model here; openai: ask the inference engine at --base-url")
    base_url: str | None = option(None, help="--engine openai: endpoint, e.g. http://127.0.0.1:8000/v1")
    served_model: str | None = option(None, help="--engine openai: the model name the engine serves")
    api_key_file: str | None = option(
        None, help="--engine openai: file holding the API key (default: $OPENAI_API_KEY; never written)")
    concurrency: int = option(8, ge=1, le=MAX_INT32, help="--engine openai: requests in flight")
    request_timeout: float = option(600.0, gt=0, help="--engine openai: seconds one request may take")
    max_attempts: int = option(6, ge=1, le=MAX_INT32, help="--engine openai: tries per request")
    retry_budget: float = option(
        600.0, gt=0, help="--engine openai: seconds one request may spend retrying (429, 5xx, no answer)")
    dtype: str | None = option(None, choices=("float32", "bfloat16"), help="compute dtype override")
    no_progress: bool = option(False, help="no progress bar")
    logprobs: bool = option(False, help="also write each row's token_ids and their logprobs under the "
                                        "policy at temperature 1 (not the warped sampling distribution)")

    def __post_init__(self) -> None:
        validate_options(self)


def validate_options(opts: SampleOptions) -> None:
    """Every numeric option a finite number inside its field's bounds, plus the rules between fields.

    The message names the flag and the value as typed: ``--top-p 0.0: must be > 0 and <= 1, got 0.0``.
    """
    hints = typing.get_type_hints(SampleOptions)
    for f in dataclasses.fields(opts):
        v = getattr(opts, f.name)
        kind = hints[f.name]
        if kind in (int, float):
            try:
                check_number(v, kind, f.metadata)
            except ValueError as e:
                raise SampleError(f"{flag_of(f)} {v!r}: {e}") from None
        elif f.metadata.get("choices") and v is not None and v not in f.metadata["choices"]:
            raise SampleError(f"{flag_of(f)} {v!r}: must be one of {', '.join(f.metadata['choices'])}")
    t = opts.temperature
    if not (t == 0 or (math.isfinite(t) and t >= MIN_TEMPERATURE)):
        raise SampleError(f"--temperature {t!r}: must be 0 (greedy) or a finite number "
                          f">= {MIN_TEMPERATURE:g}")
    rows = opts.num_samples * opts.batch_size
    if rows > MAX_INT32:
        raise SampleError(f"--num-samples {opts.num_samples!r}: must be such that --num-samples x "
                          f"--batch-size ({rows} rows per batch) <= {MAX_INT32}")
    check_engine(opts)


def check_engine(opts: SampleOptions) -> None:
    """What each engine needs: --engine jax a --model; --engine openai an http(s) --base-url and a
    --served-model, and no --max-prompt-tokens (the engine's own max-model-len bounds prompts there)."""
    if opts.engine == "jax":
        if not opts.model:
            raise SampleError("--model is required (or --engine openai with --base-url and --served-model)")
        return
    from lr_jax.openai_client.endpoint import check_base_url

    if not opts.base_url or not opts.served_model:
        raise SampleError("--engine openai needs --base-url (e.g. http://127.0.0.1:8000/v1) and "
                          "--served-model (the name the engine serves)")
    check_base_url(opts.base_url, "--base-url", SampleError)
    if opts.max_prompt_tokens:
        raise SampleError(f"--max-prompt-tokens {opts.max_prompt_tokens}: not used with --engine openai (the "
                          "engine's --max-model-len bounds prompts; a longer one is rejected and counted)")


def decoding_fields() -> dict[str, Any]:
    """Name -> default of every option that says how to decode (not which model or files): what a caller
    such as the loop's ``config.sample`` may set."""
    own = {"model", "prompts", "out", "tokenizer", "model_name", "no_progress", "logprobs", *ENGINE_FIELDS}
    return {f.name: f.default for f in dataclasses.fields(SampleOptions) if f.name not in own}
