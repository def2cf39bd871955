"""The judge's transport: the shared retrying transport (`lr_jax.openai_client.transport`: concurrency bound,
RPM/TPM limits, Retry-After, backoff, the retry budget) with the judge's config, key and accounting.

``structured="auto"`` is what lets a 400 about ``response_format`` fall back to tagged answers
(`SchemaUnsupported`); with ``json`` or ``tagged`` such a 400 rejects the request. `retry_after` is
re-exported under its old name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from judge.accounting import ClientStats
from judge.config import JudgeConfig, resolve_api_key
from lr_jax.openai_client.transport import Transport as WireTransport
from lr_jax.openai_client.transport import retry_after

__all__ = ["Transport", "retry_after"]


class Transport(WireTransport):
    """The SDK connection to the judge server (see `lr_jax.openai_client.transport.Transport`); ``stats``
    (default a new `ClientStats`) receives the retry count."""

    cfg: JudgeConfig

    def __init__(self, cfg: JudgeConfig, stats: ClientStats | None = None) -> None:
        super().__init__(cfg, resolve_api_key(cfg), stats if stats is not None else ClientStats(),
                         server="judge server")

    async def call(
        self, kind: str, est: int, fn: Callable[[], Awaitable[Any]], json_fallback: bool = False
    ) -> tuple[Any, float]:
        return await super().call(kind, est, fn, json_fallback and self.cfg.structured == "auto")
