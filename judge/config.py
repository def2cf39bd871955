"""Where the judge is and how to talk to it (`JudgeConfig`), and the endpoint helpers that go with it (the
generic ones live in `lr_jax.openai_client.endpoint`, shared with the engine sampler)."""

from __future__ import annotations

from dataclasses import dataclass

from judge.prompts import LAYOUTS
from judge.schema import JudgeInputError
from lr_jax.openai_client import endpoint
from lr_jax.openai_client.endpoint import base_url_host  # re-exported: callers import it from here
from lr_jax.options import option, validate

__all__ = ["JudgeConfig", "base_url_host", "check_base_url", "resolve_api_key"]


def check_base_url(url: str, flag: str = "--base-url") -> str:
    """``url`` if it is an http(s) URL with a host; else `JudgeInputError` in one line (an unusable endpoint
    is refused before any call instead of being retried for the whole transport budget)."""
    return endpoint.check_base_url(url, flag, JudgeInputError)


@dataclass
class JudgeConfig:
    """Where the judge is and how to talk to it. Each field's default, bounds and help live here only: the
    ``judge.score`` flags are generated from these fields (`lr_jax.options`)."""

    base_url: str = option(help="OpenAI-compatible endpoint, e.g. http://host:8000/v1")
    model: str = option(help="judge model name")
    # never a flag and never written anywhere: else api_key_file, else $OPENAI_API_KEY
    api_key: str | None = option(None, repr=False, cli=False)
    api_key_file: str | None = option(None, help="file holding the key (default: $OPENAI_API_KEY)")
    temperature: float = option(0.0, ge=0, le=2, help="first try's sampling temperature")
    retry_temperature: float = option(
        0.95, ge=0, le=2, help="temperature of re-asks after an unparseable answer"
    )
    max_tokens: int = option(1024, ge=1, help="completion tokens per judge answer")
    concurrency: int = option(16, ge=1, help="judge requests in flight")
    rpm: float | None = option(None, gt=0, help="requests per minute limit (default: none)")
    tpm: float | None = option(None, gt=0, help="prompt + completion tokens per minute limit (default: none)")
    timeout_s: float = option(120.0, gt=0, flag="--timeout", help="per-request timeout, seconds")
    max_attempts: int = option(6, ge=1, help="transport attempts per request")
    retry_budget_s: float = option(
        600.0, gt=0, flag="--retry-budget", help="seconds one request may spend retrying"
    )
    backoff_s: float = option(
        1.0, ge=0, flag="--backoff", help="first backoff, seconds (doubles per attempt)"
    )
    backoff_max_s: float = option(60.0, ge=0, cli=False)
    parse_retries: int = option(2, ge=0, help="extra asks when the answer cannot be parsed")
    structured: str = option(
        "auto",
        choices=("auto", "json", "tagged"),
        help="json: response_format JSON schema; tagged: tagged text; auto: json, falling back to tagged",
    )
    seed: int | None = option(None, help="sampling seed sent to the judge (if it supports one)")
    prompt_layout: str = option(
        "static-first",
        choices=LAYOUTS,
        help="static-first: role, rubric, examples and format first, byte-identical across calls (what "
        "prompt caching needs), variable parts last; interleaved: the zero-shot layout before issue 14",
    )

    def __post_init__(self) -> None:
        validate(self, JudgeInputError)
        if not self.base_url or not self.model:
            raise JudgeInputError("judge base_url and model are required (no default vendor)")
        check_base_url(self.base_url)


def resolve_api_key(cfg: JudgeConfig) -> str:
    """The key: ``api_key``, else ``api_key_file``, else $OPENAI_API_KEY, else "EMPTY" (local servers)."""
    return endpoint.read_api_key(cfg.api_key, cfg.api_key_file, JudgeInputError)
