"""The fake server as a separate process, for tests and benches (the server itself:
`judge.fake_server.server`)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any


class FakeJudgeServer:
    """The server as a separate process: ``with FakeJudgeServer(latency_s=0.1) as s: s.url, s.stats()``."""

    def __init__(self, **faults: Any) -> None:
        self.faults = faults
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> FakeJudgeServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "judge.fake_server", "--port", "0", "--config", json.dumps(self.faults)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("URL "):
            self.proc.kill()
            raise RuntimeError(f"fake judge server did not start (got {line!r})")
        self.url = line.split()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def root(self) -> str:
        return self.url.removesuffix("/v1")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.root + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/stats")

    def request(self, body_hash: str) -> dict[str, Any]:
        """The answered request whose body hashes to ``body_hash`` (a key of ``stats()["answered"]``)."""
        return self._call("GET", f"/requests/{body_hash}")

    def control(self, **faults: Any) -> dict[str, Any]:
        return self._call("POST", "/control", faults)

    def reset(self) -> None:
        self._call("POST", "/reset", {})
