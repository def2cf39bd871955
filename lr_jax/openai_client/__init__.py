"""One client machinery for OpenAI-compatible servers, shared by the judge and the engine sampler.

JAX-free (``judge`` imports it). Modules: `endpoint` (URL check, log-safe host, the API key), `errors` (what
one call can end in), `rate_limit` (RPM/TPM token buckets and the pause after a 429), `transport`
(`Transport`: the SDK connection with the concurrency bound, limits, Retry-After, backoff and the retry
budget). `judge.transport.Transport` is this transport with the judge's config and accounting;
`lr_jax.sample.engine` samples through it.
"""

from lr_jax.openai_client.endpoint import NO_KEY, base_url_host, check_base_url, read_api_key
from lr_jax.openai_client.errors import (
    EndpointError,
    RequestRejected,
    SchemaUnsupported,
    ServerRefused,
    TransportExhausted,
    UnusableAnswer,
)
from lr_jax.openai_client.rate_limit import RateLimiter
from lr_jax.openai_client.transport import RetryCount, Transport, WireOptions, WireSettings, retry_after

__all__ = [
    "NO_KEY", "EndpointError", "RateLimiter", "RequestRejected", "RetryCount", "SchemaUnsupported",
    "ServerRefused", "Transport", "TransportExhausted", "UnusableAnswer", "WireOptions", "WireSettings",
    "base_url_host", "check_base_url", "read_api_key", "retry_after",
]
