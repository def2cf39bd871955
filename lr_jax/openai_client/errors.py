"""What can go wrong with one call to an OpenAI-compatible server, as the transport
(`lr_jax.openai_client.transport`) reports it to its callers (the judge client, the engine sampler)."""

from __future__ import annotations

from lr_jax.errors import LrJaxError


class EndpointError(LrJaxError, ValueError):
    """An endpoint setting that cannot work (not an http(s) URL, an unreadable key file)."""


class TransportExhausted(RuntimeError):
    """The retry budget for one call ran out (429/5xx/timeouts); the caller may try again in a later run."""


class UnusableAnswer(TransportExhausted):
    """The server did answer, but every answer within the budget was unusable (a truncated or empty body, not
    JSON, the wrong content type, an error object or another shape than the one asked for, or any other
    exception while reading it). Unlike an unreachable server this will not heal by waiting."""


class RequestRejected(Exception):
    """A 4xx other than 408/409/429 for one request: that request fails, the run goes on."""


class SchemaUnsupported(Exception):
    """A 400 about ``response_format`` on a call that may fall back (the caller asks again without it)."""


class ServerRefused(LrJaxError, RuntimeError):
    """The server refuses us outright (bad key, unknown model/endpoint): stop the run, nothing is lost."""
