"""The judge's exceptions about one call to the judge server, shared by the transport (`judge.transport`),
answer decoding (`judge.answers`), the client and the batch executors (which turn a Batch API output line
into the exception the online client would have raised for that call)."""

from __future__ import annotations

# The transport's exceptions live with the shared transport (`lr_jax.openai_client`); re-exported here under
# the names the judge has always used (`JudgeFatalError`: the server refuses us outright).
from lr_jax.openai_client.errors import RequestRejected, SchemaUnsupported, TransportExhausted, UnusableAnswer
from lr_jax.openai_client.errors import ServerRefused as JudgeFatalError

__all__ = ["JudgeFatalError", "MalformedAnswer", "RequestRejected", "SchemaUnsupported", "TransportExhausted",
           "UnusableAnswer"]


class MalformedAnswer(Exception):
    """One response that is not a usable chat completion / embeddings answer (retried like a 5xx)."""
