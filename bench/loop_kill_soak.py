"""SIGKILL the LongReward loop at random points of every stage, re-run it, compare with an uninterrupted run.

    nice -n 10 python bench/loop_kill_soak.py [--kills 10] [--seed 0] [--judge job|external] [--out DIR]

The loop runs the test's tiny setting (tests/test_longreward.py's TINY: demo data, 8 simulated CPU devices,
DPO from the SFT policy through `train.init_from`). `--judge job` (default, the CPU demo's own setting) lets
the job start the scripted judge server itself; `--judge external` points the loop at one
`judge.fake_server` kept up for the whole soak, so its request log counts the judge calls paid twice.

First an uninterrupted reference run. Then one run directory is driven through `--kills` kills: each kill
waits for a stage's "running" line, sleeps a random part of that stage's reference duration and SIGKILLs the
loop's process only (its judge children must die with it: PR_SET_PDEATHSIG), then checks that no child
survived; the next start resumes. The kills are spread over every stage (the long ones twice). Finally the
run is finished and its summary.json (without the run's own paths) compared with the reference's.

Prints a Markdown table: kill, stage killed in, seconds into the stage, judge children left alive, resumed
(the next start re-entered that stage and the final run finished), summary equal, judge calls paid twice.
Not a test (minutes of CPU); results go to docs/reliability.md with date, machine and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_longreward import TINY  # noqa: E402  (the test's tiny setting, one source)

STAGES = ("sft", "sample", "score", "pairs", "dpo", "eval")
# kill points: the long stages twice, the short ones once (10 in all by default)
DEFAULT_POINTS = ("sft", "sft", "sample", "score", "score", "pairs", "dpo", "dpo", "eval", "eval")
RUNNING = re.compile(r"stage \d+/\d+ (\w+): running")


def env() -> dict[str, str]:
    e = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    e["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    return e


def command(run_dir: Path, judge_url: str | None) -> list[str]:
    args = [a for a in TINY if not a.startswith(("--config.score.scripted=", "--config.score.model="))]
    judge = ([f"--config.score.base_url={judge_url}", "--config.score.scripted=False",
              "--config.score.model=fake-judge"] if judge_url else ["--config.score.scripted=True"])
    return [sys.executable, "-m", "lr_jax.longreward", "--config", str(ROOT / "configs/cpu_longreward.py"),
            f"--config.run_dir={run_dir}", *args, *judge]


def children(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def summary_numbers(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    for r in s["rounds"]:
        for tag in ("before", "after"):
            r[tag].pop("policy", None)
    return s


def stage_seconds(run_dir: Path) -> dict[str, float]:
    return {s: json.loads((run_dir / s / "DONE.json").read_text()).get("seconds", 10.0) for s in STAGES}


class Run:
    """One start of the loop, its stderr read by a thread (the stage lines tell where it is)."""

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: list[str] = []
        self.running: list[tuple[str, float]] = []  # (stage, when its "running" line came)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if m := RUNNING.search(line):
                self.running.append((m.group(1), time.time()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=len(DEFAULT_POINTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", choices=("job", "external"), default="job")
    ap.add_argument("--out", default="/tmp/loop_kill_soak")
    ap.add_argument("--reuse-reference", action="store_true",
                    help="keep OUT/reference from an earlier soak (job judge only): saves one whole run")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    out = Path(args.out)
    ref = out / "reference"
    reuse = args.reuse_reference and (ref / "summary.json").exists() and args.judge == "job"
    for old in ([out / "killed"] if reuse else [out]):
        shutil.rmtree(old, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    server = None
    if args.judge == "external":
        from judge.fake_server import FakeJudgeServer

        server = FakeJudgeServer().__enter__()
    url = server.url if server else None
    try:
        t0 = time.time()
        if not reuse:
            p = subprocess.run(command(ref, url), env=env(), capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"reference run failed:\n{p.stderr[-3000:]}")
        ref_answered = Counter(server.stats()["answered"]) if server else Counter()
        if server:
            server.reset()
        secs = stage_seconds(ref)
        print(f"reference: {time.time() - t0:.0f}s; stage seconds {secs}", file=sys.stderr)

        d = out / "killed"
        points = [DEFAULT_POINTS[i % len(DEFAULT_POINTS)] for i in range(args.kills)]
        rows = []
        starts: list[Run] = []
        for k, want in enumerate(points, 1):
            if (d / want / "DONE.json").exists():  # an earlier kill landed later than planned: next one
                want = next((s for s in STAGES if not (d / s / "DONE.json").exists()), "eval")
            run = Run(command(d, url))
            starts.append(run)
            t_start = time.time()
            while not any(s == want for s, _ in run.running) and run.proc.poll() is None:
                if time.time() - t_start > 900:  # a resume that hangs (e.g. a deadlock) is a finding
                    os.kill(run.proc.pid, signal.SIGKILL)
                    run.proc.wait()
                    rows.append((k, want, "-", "-", "HUNG before the stage started (killed after 900 s)", ""))
                    break
                time.sleep(0.05)
            if run.proc.poll() is not None:
                if not rows or rows[-1][0] != k:
                    last = run.lines[-1].strip() if run.lines else ""
                    rc = run.proc.returncode
                    rows.append((k, want, "-", "-", f"ended on its own, rc {rc}: {last}", ""))
                continue
            started = dict(run.running)[want]
            # a random point of the stage: a part of its reference duration; a stage that ends sooner (this
            # machine's load differs from the reference's) is killed at once in the stage after it
            delay = rng.uniform(0.05, 0.8) * secs[want]
            while (time.time() < started + delay and run.proc.poll() is None
                   and run.running[-1][0] == want):
                time.sleep(0.02)
            kids = children(run.proc.pid)
            now, since = run.running[-1]
            os.kill(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
            deadline = time.time() + 10
            while any(alive(c) for c in kids) and time.time() < deadline:
                time.sleep(0.05)
            left = [c for c in kids if alive(c)]
            for c in left:
                os.kill(c, signal.SIGKILL)
            rows.append((k, now, f"{time.time() - since:.1f}", str(len(left)), "", ""))
        final = Run(command(d, url))
        try:
            final.proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            os.kill(final.proc.pid, signal.SIGKILL)
            final.proc.wait()
        ok = final.proc.returncode == 0
        starts.append(final)
        # the stage the start after each kill re-entered first (the one killed, unless it had committed)
        reentered = [r.running[0][0] if r.running else None for r in starts[1:]]
        equal = ok and summary_numbers(d) == summary_numbers(ref)
        twice = "n/a (job's own server)"
        if server:
            answered = Counter(server.stats()["answered"])
            twice = str(sum(n - 1 for n in answered.values()))
        ref_twice = sum(n - 1 for n in ref_answered.values()) if server else "n/a"
        print(f"reference run: judge calls asked twice: {ref_twice}")
        print("| kill | stage | s into stage | judge children left | resumed | summary equal | judge calls "
              "paid twice |")
        print("|---:|---|---:|---:|---|---|---|")
        for i, (k, stage, into, left, note, _) in enumerate(rows):
            first = reentered[i] if i < len(reentered) else None
            resumed = note or ("yes" if ok and first in (stage, None) else f"NO (next began with {first})")
            print(f"| {k} | {stage} | {into} | {left} | {resumed} | {'yes' if equal else 'NO'} "
                  f"| {twice if i == len(rows) - 1 else ''} |")
        if not ok:
            print("final run failed:\n" + "".join(final.lines[-30:]))
        print(f"total {time.time() - t0:.0f}s; summary equal: {equal}")
    finally:
        if server:
            server.__exit__(None, None, None)


if __name__ == "__main__":
    main()
