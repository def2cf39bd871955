"""`python -m lr_jax.longreward`: the whole loop on a tiny setting, as subprocesses, against a real judge.

One uninterrupted run (module fixture) is the reference. The improvement test reads its summary; the resume
test SIGKILLs a second run (its whole process group, judge subprocess included) in the middle of `score` and
again in the middle of `dpo`, re-runs it, and compares every final file with the reference, and the judge
server's request log with the reference's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from judge.fake_server import FakeJudgeServer
from tests.helpers.paths import ROOT

CONCURRENCY = 2  # judge requests in flight: the most a SIGKILL can lose (answered, never received)
TINY = [
    "--config.demo.sft_examples=1024", "--config.demo.train_prompts=32", "--config.demo.eval_prompts=16",
    "--config.demo.context_tokens=16", "--config.sft.data.seq_len=64", "--config.dpo.data.seq_len=64",
    "--config.sft.train.steps=60", "--config.dpo.train.steps=20", "--config.dpo.train.save_every=4",
    "--config.dpo.data.batch_size=8", "--config.sample.num_samples=4", "--config.sample.max_new_tokens=8",
    "--config.pairs.args=--min-responses 4", f"--config.score.args=--concurrency {CONCURRENCY} --max-items 2",
    "--config.score.scripted=False", "--config.score.model=fake-judge",
]


def _cmd(run_dir: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "lr_jax.longreward", "--config", str(ROOT / "configs/cpu_longreward.py"),
            f"--config.run_dir={run_dir}", f"--config.score.base_url={url}", *TINY]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    return env


def _run(run_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(_cmd(run_dir, url), env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _kill_when(run_dir: Path, url: str, ready, what: str) -> None:
    """Start the loop, SIGKILL its process group as soon as `ready()` holds; it must not have finished."""
    proc = subprocess.Popen(_cmd(run_dir, url), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"the loop ended (rc {proc.returncode}) before {what}"
        assert time.time() - t0 < 300, f"timed out waiting for {what}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30  # the judge subprocess dies (and is reaped) a moment after the loop
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)


def _answered(server: FakeJudgeServer) -> Counter[str]:
    return Counter(server.stats()["answered"])


def _describe(server: FakeJudgeServer, body_hash: str) -> str:
    """One answered request in a line: its prompt kind, temperature and the end of its user message."""
    req = server.request(body_hash)
    system = " ".join(m["content"] for m in req["messages"] if m["role"] == "system")
    user = "\n".join(m["content"] for m in req["messages"] if m["role"] == "user")
    kind = system.split("Task id: ", 1)[-1].split()[0] if "Task id: " in system else "?"
    return f"{body_hash} {kind} t={req.get('temperature')} ...{user[-300:]!r}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop") / "ref"
    with FakeJudgeServer() as server:  # kept up for the module: a failing test can show what it was asked
        t0 = time.time()
        p = _run(d, server.url)
        answered = _answered(server)
        yield {"dir": d, "stdout": p.stdout, "answered": answered, "seconds": time.time() - t0,
               "server": server}


def test_loop_commits_every_stage_and_reports(reference):
    d = reference["dir"]
    s = json.loads((d / "summary.json").read_text())
    before, after = s["eval"]["before"], s["eval"]["after"]
    assert before["prompts"] == after["prompts"] == 16
    assert s["pairs"] > 0 and s["pairs"] == json.loads((d / "pairs/metadata.json").read_text())["num_records"]
    for m in (before, after):
        assert 0 <= m["reward"] <= 10 and 0 <= m["accuracy"] <= 1 and set(m["dimensions"]) == {
            "helpfulness", "logicality", "faithfulness", "completeness"}
    held_out = {json.loads(line)["id"] for line in (d / "data/prompts_eval.jsonl").read_text().splitlines()}
    samples = (d / "sample/samples.jsonl").read_text().splitlines()
    trained = {json.loads(line)["prompt_id"] for line in samples}
    assert held_out and trained and not held_out & trained
    assert "| DPO (after) |" in reference["stdout"] and (d / "eval.png").stat().st_size > 0
    for stage in ("sft", "sample", "score", "pairs", "dpo", "eval"):
        assert (d / stage / "DONE.json").exists()
    # The judge is named in every output; an external URL is not labelled as the scripted one.
    assert s["judge"] == {"model": "fake-judge", "scripted": False}


def test_dpo_beats_sft_on_held_out_judged_reward(reference):
    s = json.loads((reference["dir"] / "summary.json").read_text())
    # Measured in this run, not copied: the policy trained on judged pairs scores higher on unseen prompts.
    assert s["eval"]["after"]["reward"] > s["eval"]["before"]["reward"], s["eval"]


def _scores(path: Path) -> dict[str, dict]:
    rows = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        rows[r["id"]] = (r["response"], r["scores"])
    return rows


def _params(hf_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_killed_in_score_and_dpo_resumes_to_the_same_files(reference, tmp_path):
    ref, d = reference["dir"], tmp_path / "run"
    with FakeJudgeServer(latency_s=0.02) as server:
        scored = d / "score" / "scored.jsonl"
        _kill_when(d, server.url, lambda: scored.exists() and scored.read_text().count("\n") >= 3,
                   "3 scored rows")
        assert not (d / "score" / "DONE.json").exists() and (d / "sample" / "DONE.json").exists()
        ckpts = d / "dpo" / "checkpoints"
        _kill_when(d, server.url, lambda: ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()),
                   "a DPO checkpoint")
        assert not (d / "dpo" / "DONE.json").exists() and (d / "score" / "DONE.json").exists()
        p = _run(d, server.url)
        answered = _answered(server)
        # what differs from the uninterrupted run's questions, described while both servers are up
        ref_answered = reference["answered"]
        extra = [_describe(server, h) for h in sorted(set(answered) - set(ref_answered))]
        missing = [_describe(reference["server"], h) for h in sorted(set(ref_answered) - set(answered))]
    assert "stage 1/6 sft: done" in p.stderr and "stage 5/6 dpo: running" in p.stderr
    assert "resumed from checkpoint step" in p.stderr

    # The same final files as the uninterrupted run.
    strip = lambda s: {k: v for k, v in s.items() if k != "seconds"}
    def numbers(run: Path) -> dict:  # summary.json without the run's own paths (rounds[].*.policy)
        s = json.loads((run / "summary.json").read_text())
        for r in s["rounds"]:
            for tag in ("before", "after"):
                r[tag].pop("policy")
        return s

    assert numbers(d) == numbers(ref)
    assert _scores(d / "score/scored.jsonl") == _scores(ref / "score/scored.jsonl")
    for name in ("samples.jsonl",):
        assert (d / "sample" / name).read_bytes() == (ref / "sample" / name).read_bytes()
    assert strip(json.loads((d / "pairs/DONE.json").read_text()))["pairs"] == strip(
        json.loads((ref / "pairs/DONE.json").read_text()))["pairs"]
    for f in sorted(p.name for p in (ref / "pairs").glob("*.tfrecord*")):  # the records themselves
        assert (d / "pairs" / f).read_bytes() == (ref / "pairs" / f).read_bytes(), f
    a, b = _params(d / "dpo/hf"), _params(ref / "dpo/hf")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, err_msg=k)
    for tag in ("before", "after"):
        name = f"eval/{tag}/samples.jsonl"
        assert (d / name).read_bytes() == (ref / name).read_bytes()

    # No judge call paid twice. The uninterrupted run asks every question exactly once (one judge cache for
    # the run: score, eval/before and eval/after share it, so an answer both policies give, or a held-out
    # query + answer already judged in training, is not asked again). The killed-and-resumed run asks each
    # question once, except the at most CONCURRENCY in flight at a kill (answered by the server, never
    # received); only the kill in `score` can have any in flight.
    assert ref_answered and max(ref_answered.values()) == 1, ref_answered
    repeats = sum(n - 1 for n in answered.values())
    assert repeats <= CONCURRENCY, repeats
    # The same questions as the uninterrupted run. One CI run (of ~10 here) asked one question the reference
    # never asked, not reproduced since; reported with the request until its cause is found (issue 13).
    if extra or missing:
        warnings.warn(f"resumed run's judge questions differ: extra {extra}, missing {missing}", stacklevel=1)


def test_cli_help_and_bad_input(tmp_path):
    env = _env()
    base = [sys.executable, "-m", "lr_jax.longreward"]
    h = subprocess.run([*base, "--help"], env=env, capture_output=True, text=True)
    assert h.returncode == 0 and "--stages" in h.stdout and "--config.score.base_url" in h.stdout
    bad = subprocess.run([*base, "--config", str(ROOT / "configs/cpu_longreward.py"),
                          f"--config.run_dir={tmp_path}", "--stages", "sft,judge"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: --stages: unknown")
    bad = subprocess.run([*base, "--config", str(ROOT / "configs/cpu_longreward.py"),
                          f"--config.run_dir={tmp_path}", "--config.sft.optim.lr=-1"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "config.sft.optim.lr" in bad.stderr.strip().splitlines()[-1]
    # A stage whose input is missing names the stage and the file it needs.
    bad = subprocess.run([*base, "--config", str(ROOT / "configs/cpu_longreward.py"),
                          f"--config.run_dir={tmp_path}", "--stages", "pairs"], env=env,
                         capture_output=True, text=True)
    last = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 2 and last.startswith("error: stage pairs: needs stage score")
    assert "DONE.json" in last
    bad = subprocess.run([*base, "--config", str(tmp_path / "nope.py")], env=env, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        f"error: --config {tmp_path / 'nope.py'}: no such file"]  # lr_jax.cli's line, as train and plan
    bad = subprocess.run([*base, "--config", str(ROOT / "configs/cpu_longreward.py"),
                          f"--config.run_dir={tmp_path}", "--config.sft.train.lrr=1"], env=env,
                         capture_output=True, text=True)
    lines = bad.stderr.strip().splitlines()  # one line with the section path, quotes as typed (issue 19 #10)
    assert bad.returncode == 2 and len(lines) == 1
    assert lines[0].startswith("error: --config.sft.train.lrr: unknown key 'lrr' in section 'sft.train'")


# ------------------------------------------------------------------------------------ issue 19: reliability


def _children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                stat = (p / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(p.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkilled_loop_takes_its_scripted_judge_along_and_resumes_score(tmp_path):
    # The CPU demo's own setting: the scripted judge server started BY THE JOB (not an external one). Only
    # the loop's process is SIGKILLed (not its group): its children must die with it (issue 19 case 9), and
    # the re-run must talk to the same judge, so the rows scored before the kill are kept (case 2: a new
    # random port changed every row's fingerprint and all were refused).
    facts = ["The capital of Veloria is Ashford.", "The lake of Veloria is Mirren.", "Rain falls in May."]
    prompts = [{"id": f"p{i}", "context": " ".join(facts[i:] + facts[:i]), "query": "What is the capital?"}
               for i in range(2)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts))
    d = tmp_path / "run"
    (d / "sample").mkdir(parents=True)
    answers = ["Ashford.", "Mirren.", "The capital is Ashford.", "Veloria."]
    rows = [{"id": f"{p['id']}-{k}", "prompt_id": p["id"], "query": p["query"], "response": a,
             "sampler": {"model": "m", "temperature": 1.0, "top_p": 1.0, "seed": 0}}
            for p in prompts for k, a in enumerate(answers)]
    (d / "sample/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "sample/DONE.json").write_text("{}")
    cmd = [sys.executable, "-m", "lr_jax.longreward", "--config", str(ROOT / "configs/cpu_longreward.py"),
           f"--config.run_dir={d}", f"--config.prompts={tmp_path / 'prompts.jsonl'}",
           f"--config.tokenizer={tmp_path}", "--stages", "score", "--config.score.args=--concurrency 1"]
    slow = '--config.score.scripted_faults={"latency_s": 0.1}'
    proc = subprocess.Popen([*cmd, slow], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    scored = d / "score" / "scored.jsonl"
    t0 = time.time()
    while not (scored.exists() and scored.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() - t0 < 120, "the loop ended or never scored 2 rows"
        time.sleep(0.05)
    children = _children(proc.pid)
    assert len(children) == 2, children  # the scripted server and judge.score
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(c) for c in children) and time.time() < deadline:
        time.sleep(0.05)
    left = [c for c in children if _alive(c)]
    for c in left:
        os.kill(c, signal.SIGKILL)
    assert not left, f"the loop's judge processes outlived it: {left}"
    done_before = {json.loads(x)["id"] for x in scored.read_text().splitlines() if x.endswith("}")}
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    # every row finished before the kill kept as it was (its fingerprint still matches), the rest scored
    s = json.loads((d / "score/DONE.json").read_text())["summary"]
    assert s["already_done"] == len(done_before) >= 2 and s["rescored_changed"] == 0, s
    assert s["rows_in_file"] == s["samples"] == len(rows) and s["pending"] == s["failed"] == 0, s


def _loop_config(tmp_path: Path, **changes):
    from lr_jax.longreward.config import default_config

    c = default_config()
    c.run_dir = str(tmp_path / "run")
    c.score.scripted = True
    for dotted, v in changes.items():
        node = c
        *path, last = dotted.split(".")
        for k in path:
            node = node[k]
        node[last] = v
    return c


@pytest.mark.parametrize("change,needle", [
    ({"score.args": "--concurrency 0"}, "config.score.args: judge.score: argument --concurrency"),
    ({"pairs.args": "--bogus 3"}, "config.pairs.args: judge.pairs: unrecognized arguments: --bogus"),
    ({"prompts": "/nope/prompts.jsonl", "tokenizer": "/tmp"}, "config.prompts /nope/prompts.jsonl"),
    ({"score.scripted_faults": "{bad json"}, "config.score.scripted_faults: not JSON"),
    ({"sample.temperature": float("nan")}, "config.sample.temperature: --temperature nan"),
    ({"eval.answer_metric": "bleu"}, "answer_metric: must be one of exact, match, f1, got 'bleu'"),
    ({"run_dir": "FILE"}, "exists and is not a directory"),
    ({"run_dir": "FILE/run"}, "a parent of it is a file"),
])
def test_every_section_is_checked_before_the_first_stage(change, needle, tmp_path):
    from lr_jax.errors import ConfigError
    from lr_jax.longreward.config import STAGES
    from lr_jax.longreward.loop import Loop

    (tmp_path / "FILE").write_text("keep")
    if "run_dir" in change:
        change = {"run_dir": str(tmp_path / change["run_dir"])}
    # the run dir is checked whatever the stages; "sft" alone skips the judge's checks (seconds of CPU)
    stages = ("sft",) if "run_dir" in change else STAGES
    with pytest.raises(ConfigError) as e:
        Loop(_loop_config(tmp_path, **change), stages, 1).run()
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    # nothing ran: no stage directory, no config.json
    assert not (tmp_path / "run").exists() and (tmp_path / "FILE").read_text() == "keep"


def test_stage_settings_name_the_first_changed_field(tmp_path):
    from lr_jax.longreward.config import settings
    from lr_jax.longreward.markers import StaleStage, check_settings, commit

    base = _loop_config(tmp_path)
    d = tmp_path / "sft"
    commit(d, {"settings": settings(base, "sft")})
    # what does not change the result (how often to save, where) is not a setting
    check_settings("sft", d, settings(_loop_config(tmp_path, **{"sft.train.save_every": 7}), "sft"))
    check_settings("sft", d, settings(_loop_config(tmp_path, **{"sample.temperature": 0.5}), "sft"))
    for field, value, stage in (("sft.train.steps", 61, "sft"), ("sample.temperature", 0.5, "sample"),
                                ("score.args", "--concurrency 3", "score"), ("demo.seed", 3, "sft")):
        commit(d, {"settings": settings(base, stage)})
        with pytest.raises(StaleStage) as e:
            check_settings(stage, d, settings(_loop_config(tmp_path, **{field: value}), stage))
        assert f"stage {stage}: config.{field} was " in str(e.value) and "rerun_changed" in str(e.value)


def test_rerun_with_changed_settings_is_refused_or_reruns_that_stage_on_request(reference, tmp_path):
    import shutil

    import ml_collections

    from lr_jax.longreward.config import STAGES
    from lr_jax.longreward.loop import Loop
    from lr_jax.longreward.markers import StaleStage

    d = tmp_path / "run"
    shutil.copytree(reference["dir"], d)
    config = (d / "config.json").read_bytes()
    # The config as run (in process: a CLI start costs seconds), with another sampling temperature.
    cfg = ml_collections.ConfigDict(json.loads(config))
    cfg.run_dir, cfg.sample.temperature = str(d), 0.5
    with pytest.raises(StaleStage) as e:
        Loop(cfg, STAGES, 1).run()
    assert str(e.value).startswith("stage sample: config.sample.temperature was 1.0 when it ran, now 0.5")
    assert (d / "config.json").read_bytes() == config and not (d / "replaced").exists()
    # With the flag, the changed stage (eval) and the ones after it are moved aside to be run again (here
    # --stages sft: the move, not the re-run, is under test; a stage's run is the reference run's), the
    # stages before it stay, and config.json now says what the next results are made with.
    cfg.sample.temperature, cfg.eval.sample.num_samples, cfg.rerun_changed = 1.0, 1, True
    assert Loop(cfg, ("sft",), 1).run() == {}
    moved = list((d / "replaced").glob("*/eval/DONE.json"))
    assert len(moved) == 1 and not (d / "eval").exists() and not (d / "summary.json").exists()
    assert (moved[0].parents[1] / "summary.json").exists()
    assert all((d / s / "DONE.json").exists() for s in STAGES[:-1])
    assert json.loads((d / "config.json").read_text())["eval"]["sample"]["num_samples"] == 1
    cfg.rerun_changed = False  # and the moved stage is no longer compared: nothing left to refuse
    Loop(cfg, ("sft",), 1).run()


def test_eval_baseline_dir_is_shared_and_accuracy_uses_the_answer_metric(reference, tmp_path):
    """A second run pointing `eval.baseline_dir` at the first run's "before" answers decodes nothing for
    them (it only resumes), and its summary equals the first run's; `answer_metric` picks the accuracy
    rule."""
    import shutil

    import ml_collections

    from lr_jax.longreward.loop import Loop
    from lr_jax.longreward.report import eval_metrics

    d, baseline = tmp_path / "run", tmp_path / "shared_before"
    shutil.copytree(reference["dir"], d)
    baseline.mkdir()
    shutil.move(d / "eval" / "before" / "samples.jsonl", baseline / "samples.jsonl")
    shutil.rmtree(d / "eval" / "before" / "score")  # judged again, by this run's judge, from its cache
    (d / "eval" / "DONE.json").unlink()
    (baseline / "samples.jsonl").chmod(0o444)  # resumed, never appended to
    cfg = ml_collections.ConfigDict(json.loads((d / "config.json").read_text()))
    cfg.run_dir, cfg.eval.baseline_dir = str(d), str(baseline)
    Loop(cfg, ("eval",), 1).run()
    assert not (d / "eval" / "before" / "samples.jsonl").exists()
    assert sorted(p.name for p in baseline.iterdir()) == ["samples.jsonl"]  # the answers only: no judgements
    assert (d / "eval" / "before" / "score" / "scored.jsonl").exists()
    want = json.loads((reference["dir"] / "summary.json").read_text())["eval"]
    assert json.loads((d / "summary.json").read_text())["eval"] == want

    # the rule: "exact" (the whole normalised answer) vs "match" (the answer as words of the first sentence)
    prompts = {"p": {"answer": "Ashford", "distractors": ["Mirren"]}, "q": {"query": "no answer"}}
    rows = [{"id": f"p-{i}", "prompt_id": "p", "response": r, "scores": {"reward": 5.0}}
            for i, r in enumerate(["Ashford.", "It is Ashford.", "Ashford or Mirren."])]
    rows.append({"id": "q-0", "prompt_id": "q", "response": "x", "scores": {"reward": 5.0}})
    scored = tmp_path / "scored.jsonl"
    scored.write_text("".join(json.dumps(r) + "\n" for r in rows))
    exact, match = eval_metrics(scored, prompts, "exact"), eval_metrics(scored, prompts, "match")
    assert (exact["accuracy"], match["accuracy"]) == (round(1 / 3, 4), round(2 / 3, 4))
    assert match["with_reference"] == 3 and match["answer_metric"] == "match"
