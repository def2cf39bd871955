"""The judge, as subprocesses: ``python -m judge.score`` / ``judge.pairs``, and the scripted server.

`lr_jax` never imports `judge` (docs/architecture.md): the judge stays a JAX-free process exactly as when it
runs on another machine, and its options are checked by its own parser (`check_judge_args`, a dry parse in a
subprocess, before the first stage). Every child is started through `_DIE_WITH_PARENT`, so it is killed
when the loop dies, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``, Linux): no judge server runs on, orphaned.

``score.scripted = True`` (CPU test mode only) starts ``python -m judge.fake_server`` for the job. Its port
is recorded in ``run_dir/judge_server.json`` and reused by every later run of the job: the endpoint is part
of each scored row's fingerprint (`judge.provenance`), so a resumed ``score`` or ``eval`` talks to the same
judge at the same URL and keeps the rows finished before a kill.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from lr_jax.errors import ConfigError, LrJaxError

SCRIPTED_LABEL = "SCRIPTED TEST JUDGE (word overlap; CPU test mode, not an LLM)"
SERVER_FILE = "judge_server.json"

# `python -c` prelude: ask the kernel to SIGKILL this process when its parent dies, then run the module as
# `python -m` would. Checking the parent pid after prctl closes the race with a parent that died first.
_DIE_WITH_PARENT = """\
import ctypes, os, runpy, signal, sys
parent, module = int(sys.argv[1]), sys.argv[2]
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass  # not Linux: the child outlives a SIGKILLed loop
if os.getppid() != parent:
    sys.exit(1)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

# `python -c` program for `check_judge_args`: run each module's CLI until its parser has parsed, then stop.
_DRY_PARSE = """\
import argparse, json, runpy, sys
class Parsed(Exception):
    pass
parse = argparse.ArgumentParser.parse_args
def parse_then_stop(self, args=None, namespace=None):
    parse(self, args, namespace)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_then_stop
for module, argv in json.loads(sys.argv[1]):
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except Parsed:
        continue
    except SystemExit as e:
        print(module)  # which parser refused: its error line is on stderr
        sys.exit(e.code)
"""


class LoopError(LrJaxError):
    """A stage of the loop failed on bad input; the message starts with the stage."""


def log(msg: str) -> None:
    print(f"[lr_jax.longreward] {msg}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    """Subprocesses find this checkout's packages even when it is not installed."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def module_command(module: str, argv: list[str]) -> list[str]:
    """``python -m module argv``, started so that it dies with this process."""
    return [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), module, *argv]


def split_args(text: str, field: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ConfigError(f"config.{field}: {e} in {text!r}") from None


def run_module(stage: str, module: str, argv: list[str]) -> int:
    """Run `python -m module argv`; its stderr streams through, an `error:` exit becomes a LoopError."""
    proc = subprocess.Popen(module_command(module, argv), stderr=subprocess.PIPE, text=True, env=child_env())
    last_error = ""
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if "error:" in line:
            last_error = line.split("error:", 1)[1].strip()
    rc = proc.wait()
    if rc not in (0, 1):
        raise LoopError(f"stage {stage}: {module}: {last_error or f'exit status {rc}'}")
    return rc


def score_argv(*, prompts: str, samples: str, out: str, base_url: str, model: str, cache: str | None,
               api_key_file: str, args: list[str]) -> list[str]:
    argv = ["--prompts", prompts, "--samples", samples, "--out", out, "--base-url", base_url,
            "--model", model]
    if cache is not None:
        argv += ["--cache", cache]
    if api_key_file:
        argv += ["--api-key-file", api_key_file]
    return argv + args


def pairs_argv(*, scored: str, prompts: str, out: str, args: list[str]) -> list[str]:
    return ["--scored", scored, "--prompts", prompts, "--out", out, *args]


def check_judge_args(score_args: list[str] | None, pairs_args: list[str] | None) -> None:
    """Parse ``config.score.args`` / ``config.pairs.args`` with judge.score's / judge.pairs' own parsers
    (in a subprocess: no file is read, nothing runs); a bad flag is one line naming the section."""
    checks: list[tuple[str, str, list[str]]] = []
    if score_args is not None:
        checks.append(("score.args", "judge.score", score_argv(
            prompts="p.jsonl", samples="s.jsonl", out="out", base_url="http://127.0.0.1:1/v1", model="m",
            cache=None, api_key_file="", args=score_args)))
    if pairs_args is not None:
        checks.append(("pairs.args", "judge.pairs", pairs_argv(scored="s", prompts="p.jsonl", out="out",
                                                               args=pairs_args)))
    if not checks:
        return
    # One process for both (a second Python start costs seconds); stdout names the module that refused.
    p = subprocess.run([sys.executable, "-c", _DRY_PARSE, json.dumps([[m, a] for _, m, a in checks])],
                       capture_output=True, text=True, env=child_env())
    if p.returncode:
        refused = (p.stdout.strip().splitlines() or [""])[-1]
        field = next((f for f, m, _ in checks if m == refused), checks[0][0])
        lines = [x for x in p.stderr.splitlines() if "error:" in x] or p.stderr.splitlines()[-1:]
        msg = lines[-1].split("error:", 1)[-1].strip() if lines else f"exit status {p.returncode}"
        raise ConfigError(f"config.{field}: {refused or 'the judge'}: {msg}")


class Judge:
    """The judge endpoint for `score` and `eval`: a configured URL, or the scripted server (CPU test mode),
    started on first use on the port this run dir recorded, and stopped when the job ends."""

    def __init__(self, cfg: Any, run_dir: Path) -> None:
        s = cfg.score
        self.scripted = bool(s.scripted)
        self.faults = s.scripted_faults  # JSON of judge.fake_server faults (its --config), checked already
        self.model = s.model or ("scripted-judge" if self.scripted else "")
        self.api_key_file = s.api_key_file
        self.args = split_args(s.args, "score.args")
        self.run_dir = run_dir
        self._url = "" if self.scripted else s.base_url
        self._proc: subprocess.Popen[str] | None = None
        if not self.scripted and not (s.base_url and s.model):
            raise ConfigError("config.score: set base_url and model (an OpenAI-compatible judge), or "
                              "scripted=True for CPU test mode")

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "scripted": self.scripted}
        if self.scripted:
            out["label"] = SCRIPTED_LABEL
        return out

    @property
    def url(self) -> str:
        if not self._url:
            self._url = self._start_scripted()
        return self._url

    def _start_scripted(self) -> str:
        record = self.run_dir / SERVER_FILE
        port = json.loads(record.read_text())["port"] if record.exists() else 0
        # stderr to a file, not a pipe nobody reads: a chatty server must never block on a full pipe
        errors = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives as long as the server)
        self._proc = subprocess.Popen(
            module_command("judge.fake_server", ["--port", str(port), "--config", self.faults]),
            stdout=subprocess.PIPE, stderr=errors, text=True, env=child_env())
        line = self._proc.stdout.readline() if self._proc.stdout else ""
        if not line.startswith("URL "):
            self._proc.wait(timeout=10)
            errors.seek(0)
            err = errors.read()
            self.close()
            why = (err.strip().splitlines() or [repr(line)])[-1]
            held = f" (port {port}, recorded in {record} so that a resumed run asks the same endpoint: " \
                   "stop what holds it, or delete the file to start afresh)" if port else ""
            raise LoopError(f"stage score: the scripted judge server did not start{held}: {why}")
        url = line.split()[1]
        if not port:
            record.write_text(json.dumps({"port": int(url.rsplit(":", 1)[1].split("/")[0])}) + "\n")
        log(f"started the {SCRIPTED_LABEL} at {url}")
        return url

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def score(self, stage: str, prompts: str, samples: Path, out: Path, cache: Path) -> dict[str, Any]:
        """`python -m judge.score` on `samples`, resumable by its rows and the run's one answer `cache`.
        Returns its summary.json."""
        argv = score_argv(prompts=prompts, samples=str(samples), out=str(out), base_url=self.url,
                          model=self.model, cache=str(cache), api_key_file=self.api_key_file, args=self.args)
        if run_module(stage, "judge.score", argv) == 1:
            raise LoopError(f"stage {stage}: judge.score left responses pending (transport retries ran out); "
                            f"re-run to continue from {cache}")
        return json.loads((out / "summary.json").read_text())
