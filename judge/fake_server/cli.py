"""``python -m judge.fake_server --port 0 [--config JSON]``: the command line of the scripted judge server
(endpoints, scripted answers and faults: `judge.fake_server`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json

from judge.fake_server.batches import run_batch_file
from judge.fake_server.faults import Faults
from judge.fake_server.server import make_server
from judge.schema import JudgeInputError
from lr_jax.options import OneLineParser, int_at_least, run_cli


def parse_faults(text: str) -> Faults:
    """``--config``: a JSON object of `Faults` fields; anything else is one `JudgeInputError` line."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise JudgeInputError(f"--config is not JSON ({e.msg} at column {e.colno}): {text[:80]!r}") from None
    if not isinstance(obj, dict):
        raise JudgeInputError(f"--config must be a JSON object of fault settings, got {type(obj).__name__}")
    known = {f.name for f in dataclasses.fields(Faults)}
    if unknown := sorted(set(obj) - known):
        raise JudgeInputError(f"--config: unknown fault setting(s) {unknown}; known: {sorted(known)}")
    return Faults(**obj)


def _run_batch(src: str, dst: str, faults: Faults) -> int:
    try:
        n = run_batch_file(src, dst, faults)
    except OSError as e:
        raise JudgeInputError(f"--run-batch: {e.filename}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise JudgeInputError(f"--run-batch: {src} is not Batch API JSONL ({e})") from None
    print(f"answered {n} request(s) into {dst}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m judge.fake_server", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int_at_least(0), default=0, help="0: pick a free port")
    ap.add_argument("--config", default="{}", help="JSON object of Faults fields")
    ap.add_argument(
        "--run-batch", nargs=2, metavar=("IN", "OUT"), help="answer a Batch-API JSONL offline, then exit"
    )
    args = ap.parse_args(argv)

    def body() -> int:
        faults = parse_faults(args.config)
        if args.run_batch:
            return _run_batch(*args.run_batch, faults)
        if args.port > 65535:
            raise JudgeInputError(f"--port {args.port}: a port is at most 65535")
        try:
            srv = make_server(args.port, faults)
        except OSError as e:
            raise JudgeInputError(f"--port {args.port}: cannot listen ({e.strerror})") from None
        print(f"URL http://127.0.0.1:{srv.server_address[1]}/v1", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            srv.serve_forever()
        return 0

    return run_cli("judge.fake_server", body)
