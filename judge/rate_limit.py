"""The RPM/TPM limiter, now shared with `lr_jax.sample --engine openai`: it lives in
`lr_jax.openai_client.rate_limit` (re-exported here under its old name)."""

from lr_jax.openai_client.rate_limit import Clock, RateLimiter, Sleep

__all__ = ["Clock", "RateLimiter", "Sleep"]
