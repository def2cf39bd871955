"""Where an OpenAI-compatible server is and how we authenticate: URL check, log-safe host, API key."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from lr_jax.openai_client.errors import EndpointError

# Local servers (vLLM, SGLang, llama.cpp, the fake server) accept any key; "EMPTY" is their convention.
NO_KEY = "EMPTY"


def check_base_url(url: str, flag: str = "--base-url", error: type[Exception] = EndpointError) -> str:
    """``url`` if it is an http(s) URL with a host; else ``error`` in one line (an unusable endpoint is
    refused before any call instead of being retried for the whole transport budget)."""
    try:
        u = urlparse(url)
        host = u.hostname
        u.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise error(f"{flag} {url!r} is not a URL ({e})") from None
    if u.scheme not in ("http", "https") or not host:
        raise error(f"{flag} {url!r} is not an http(s) URL with a host (e.g. http://127.0.0.1:8000/v1)")
    return url


def base_url_host(base_url: str) -> str:
    """Host[:port] only: no scheme, path, query or userinfo (which could carry a credential)."""
    u = urlparse(base_url)
    return f"{u.hostname}:{u.port}" if u.port else str(u.hostname)


def read_api_key(key: str | None, key_file: str | None, error: type[Exception] = EndpointError) -> str:
    """``key``, else the contents of ``key_file``, else ``$OPENAI_API_KEY``, else `NO_KEY`. The key is never
    written anywhere by the project (it lives only inside the SDK client)."""
    if key:
        return key
    if key_file:
        try:
            return Path(key_file).expanduser().read_text().strip()
        except OSError as e:
            raise error(f"cannot read api key file {key_file}: {e.strerror}") from None
    return os.environ.get("OPENAI_API_KEY") or NO_KEY
