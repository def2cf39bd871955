"""The judge's exceptions about one call to the judge server, shared by the transport (`judge.transport`),
answer decoding (`judge.answers`), the client and the batch executors (which turn a Batch API output line
into the exception the online client would have raised for that call)."""

from __future__ import annotations

from lr_jax.errors import LrJaxError


class TransportExhausted(RuntimeError):
    """The retry budget for one call ran out (429/5xx/timeouts); the item stays pending for the next run."""


class UnusableAnswer(TransportExhausted):
    """The server did answer, but every answer within the budget was unusable (a truncated or empty body, not
    JSON, the wrong content type, an error object or another shape than a chat completion, or any other
    exception while reading it). Unlike an unreachable server this will not heal by waiting: the call is
    recorded as a failed dimension (never a number), and the run goes on."""


class MalformedAnswer(Exception):
    """One response that is not a usable chat completion / embeddings answer (retried like a 5xx)."""


class RequestRejected(Exception):
    """A 4xx other than 408/409/429 for one request: that question fails (a failed dimension), the run goes
    on."""


class SchemaUnsupported(Exception):
    """A 400 about ``response_format`` with ``structured='auto'``: ask the same question in tagged form."""


class JudgeFatalError(LrJaxError, RuntimeError):
    """The server refuses us outright (bad key, unknown model/endpoint): stop the run, nothing is lost."""
