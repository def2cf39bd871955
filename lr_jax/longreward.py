"""`python -m lr_jax.longreward --config configs/x.py [--stages a,b] [--rounds K] [--config.x.y=...]`.

The LongReward loop as one resumable job: ``sft → sample → score → pairs → dpo → eval``, every stage in its
own sub-directory of ``config.run_dir`` with a commit marker ``DONE.json`` written only when the stage has
finished. A re-run skips committed stages and re-enters the first unfinished one, which resumes where it
stopped by its own mechanism (trainer checkpoints, the Samples file, the judge's cache / ``scored.jsonl``).

How each stage runs, and why:

- ``sft``, ``dpo``: `lr_jax.training.trainer.run` in this process, with configs built by the trainer's own
  schema (`lr_jax.training.config.from_config_dict`); the trained policy is exported as an HF dir.
- ``sample`` and the decoding half of ``eval``: `lr_jax.sample.run` in this process, with options parsed by
  `lr_jax.sample.build_parser` (the sampler's defaults are the only defaults).
- ``score``, ``pairs`` and the judging half of ``eval``: ``python -m judge.score`` / ``judge.pairs`` as
  subprocesses. `lr_jax` never imports `judge` (rules of the house, docs/architecture.md), the judge stays a
  JAX-free process exactly as when it runs on another machine, and its options are checked by its own parser.
  ``score.scripted = True`` (CPU test mode only) starts ``python -m judge.fake_server`` for the job and stops
  it at the end; every output then says so (``judge.scripted`` in summary.json, the table, the PNG).

Disk layout (round 1 at the top; round k >= 2 under ``round_k/``)::

    run_dir/config.json            the loop config as run
    run_dir/data/                  demo only: prompts.jsonl, prompts_eval.jsonl, sft.jsonl, tokenizer/
    run_dir/sft/                   trainer out_dir (checkpoints/, metrics.jsonl), hf/ = the SFT policy
    run_dir/sample/samples.jsonl   N responses per training prompt
    run_dir/score/                 scored.jsonl, summary.json
    run_dir/pairs/                 preference TFRecords + metadata.json
    run_dir/dpo/                   trainer out_dir, hf/ = the DPO policy
    run_dir/eval/{before,after}/   greedy samples on held-out prompts, their scores, metrics.json
    run_dir/judge_cache.sqlite     the judge's answers, one cache for score, eval and every round
    run_dir/<stage>/DONE.json      the commit marker (what the stage produced)
    run_dir/summary.json, summary.md, eval.png

Every input error is one ``error: stage <name>: ...`` line naming the file, exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lr_jax.errors import ConfigError, LrJaxError

STAGES = ("sft", "sample", "score", "pairs", "dpo", "eval")
ROUND_STAGES = STAGES[1:]  # repeated by --rounds; sft runs once
DIMENSIONS = ("helpfulness", "logicality", "faithfulness", "completeness")
SCRIPTED_LABEL = "SCRIPTED TEST JUDGE (word overlap; CPU test mode, not an LLM)"
MARKER = "DONE.json"
# lr_jax.sample options the loop sets itself (paths, names); the rest come from config.sample.
_SAMPLE_OWN = ("model", "prompts", "out", "tokenizer", "model_name", "help", "no_progress")


class LoopError(LrJaxError):
    """A stage of the loop failed on bad input; the message starts with the stage."""


def _log(msg: str) -> None:
    print(f"[lr_jax.longreward] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- config


def sample_defaults() -> dict[str, Any]:
    """The sampler's own option defaults (`lr_jax.sample.build_parser`), minus what the loop sets."""
    from lr_jax.sample import build_parser

    return {a.dest: a.default for a in build_parser()._actions if a.dest not in _SAMPLE_OWN}


def default_config(model: Any = None) -> Any:
    """The loop's ConfigDict: one section per stage; the training sections are whole trainer configs."""
    import ml_collections

    from lr_jax.training.config import default_config_dict

    c = ml_collections.ConfigDict()
    c.run_dir = "runs/longreward"
    c.stages = ""  # "" = all, else a comma list of STAGES (same as --stages)
    c.rounds = 1  # >1: sample → eval again from the previous round's DPO policy (iterative DPO)
    c.prompts = ""  # training prompts JSONL (id, context, query[, answer]); "" = the demo data
    c.eval_prompts = ""  # held-out prompts JSONL; `answer` enables exact-answer accuracy
    c.tokenizer = ""  # local tokenizer dir; "" = the policy's (demo: run_dir/data/tokenizer)
    c.init_from = ""  # an HF dir to start from instead of the sft stage (sft is then skipped)
    # > 0: DPO trains this many passes over the pairs (dpo.train.steps = ceil(epochs x pairs / batch_size)),
    # since the pair count is known only after `pairs`: a policy already right on most prompts yields few
    # pairs, and a fixed step count then overfits them. 0: dpo.train.steps as set.
    c.dpo_epochs = 0.0
    c.demo = ml_collections.ConfigDict(dict(
        seed=0, sft_examples=2048, train_prompts=128, eval_prompts=64, context_tokens=48, num_facts=1,
        num_values=4, answer_style="value"))
    c.sft = default_config_dict(model)
    c.sft.dpo.objective = "sft"
    c.dpo = default_config_dict(model)
    c.sample = ml_collections.ConfigDict(sample_defaults())
    # Held-out decoding: overrides of config.sample (greedy, one answer per prompt).
    c.eval = ml_collections.ConfigDict(dict(sample=ml_collections.ConfigDict(
        dict(temperature=0.0, num_samples=1))))
    c.score = ml_collections.ConfigDict(dict(
        base_url="", model="", scripted=False, scripted_faults="{}",
        api_key_file="", args=""))
    # judge.score / judge.pairs flags as one string each (e.g. "--concurrency 32"), checked by their own
    # parsers: the judge's defaults stay the only defaults, and lr_jax never imports judge to learn them.
    c.pairs = ml_collections.ConfigDict(dict(args=""))
    return c


@dataclass(frozen=True)
class Paths:
    """Where round `r`'s stages live."""

    run_dir: Path
    round: int

    def stage(self, name: str) -> Path:
        if name == "sft" or self.round == 1:
            return self.run_dir / name
        return self.run_dir / f"round_{self.round}" / name


def _as_dict(x: Any) -> dict[str, Any]:
    return x.to_dict() if hasattr(x, "to_dict") else dict(x)


def _flag_args(options: dict[str, Any]) -> list[str]:
    """{"min_responses": 2, "retry_failed": True} -> ["--min-responses", "2", "--retry-failed"]."""
    out: list[str] = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if v is True:
            out.append(flag)
        elif v is False or v is None:
            continue
        else:
            out += [flag, str(v)]
    return out


def sample_args(options: dict[str, Any], *, model: str, prompts: str, out: str, tokenizer: str | None,
                name: str, where: str) -> argparse.Namespace:
    """`lr_jax.sample` arguments from the loop's options, parsed and type-checked by the sampler's parser."""
    from lr_jax.sample import build_parser, validate_args

    known = sample_defaults()
    for k in options:
        if k not in known:
            raise ConfigError(f"config.{where}.{k}: not an lr_jax.sample option (known: {', '.join(known)})")
    argv = ["--model", model, "--prompts", prompts, "--out", out, "--model-name", name]
    if tokenizer:
        argv += ["--tokenizer", tokenizer]
    argv += _flag_args({k: v for k, v in options.items() if v != known[k] or v is True})
    parser = build_parser()
    parser.exit_on_error = False
    try:
        ns = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        raise ConfigError(f"config.{where}: {e}") from None
    ns.no_progress = False
    validate_args(ns)
    return ns


def training_config(section: Any, where: str, **fields: Any) -> Any:
    """A trainer `Config` from a loop section plus the paths the loop owns (`fields`: 'train.out_dir': …)."""
    from lr_jax.training.config import from_config_dict

    raw = copy.deepcopy(_as_dict(section))
    for dotted, value in fields.items():
        sec, key = dotted.split(".")
        raw.setdefault(sec, {})[key] = value
    try:
        return from_config_dict(raw)
    except ConfigError as e:
        raise ConfigError(str(e).replace("config.", f"config.{where}.", 1)) from None


def parse_stages(spec: str) -> tuple[str, ...]:
    """"" -> every stage; "score,pairs" -> those, in pipeline order; unknown names are an error."""
    if not spec:
        return STAGES
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in STAGES]
    if bad:
        raise ConfigError(f"--stages: unknown stage(s) {bad}; stages are {', '.join(STAGES)}")
    return tuple(s for s in STAGES if s in names)


# ----------------------------------------------------------------------------------------------- markers


def is_done(d: Path) -> bool:
    return (d / MARKER).exists()


def read_marker(d: Path) -> dict[str, Any]:
    return json.loads((d / MARKER).read_text())


def commit(d: Path, info: dict[str, Any]) -> None:
    """Write the stage's commit marker atomically (temp file + rename): present = the stage finished."""
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=1, sort_keys=True))
    os.replace(tmp, d / MARKER)


# ----------------------------------------------------------------------------------------------- judge


class Judge:
    """The judge endpoint for `score` and `eval`: a configured URL, or the scripted server (CPU test mode),
    started on first use and stopped when the job ends."""

    def __init__(self, cfg: Any) -> None:
        s = cfg.score
        self.scripted = bool(s.scripted)
        self.faults = s.scripted_faults  # JSON of judge.fake_server faults (its --config)
        self.model = s.model or ("scripted-judge" if self.scripted else "")
        self.api_key_file = s.api_key_file
        self.args = shlex.split(s.args)
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
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "judge.fake_server", "--port", "0", "--config", self.faults],
                stdout=subprocess.PIPE, text=True, env=_child_env())
            line = self._proc.stdout.readline() if self._proc.stdout else ""
            if not line.startswith("URL "):
                self.close()
                raise LoopError(f"stage score: the scripted judge server did not start (got {line!r})")
            self._url = line.split()[1]
            _log(f"started the {SCRIPTED_LABEL} at {self._url}")
        return self._url

    def close(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def score(self, stage: str, prompts: str, samples: Path, out: Path,
              cache: Path | None = None) -> dict[str, Any]:
        """`python -m judge.score` on `samples`; resumable by its own cache (`out/judge_cache.sqlite`, or
        `cache` when several runs share one). Returns its summary.json."""
        argv = ["--prompts", prompts, "--samples", str(samples), "--out", str(out),
                "--base-url", self.url, "--model", self.model]
        if cache is not None:
            argv += ["--cache", str(cache)]
        if self.api_key_file:
            argv += ["--api-key-file", self.api_key_file]
        rc = _run_module(stage, "judge.score", argv + self.args)
        if rc == 1:
            raise LoopError(f"stage {stage}: judge.score left responses pending (transport retries ran out); "
                            f"re-run to continue from {cache or out / 'judge_cache.sqlite'}")
        return json.loads((out / "summary.json").read_text())


def _distributed_started() -> bool:
    from jax._src import distributed

    return distributed.global_state.client is not None


def _child_env() -> dict[str, str]:
    """Subprocesses find this checkout's packages even when it is not installed."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _run_module(stage: str, module: str, argv: list[str]) -> int:
    """Run `python -m module argv`; its stderr streams through, an `error:` exit becomes a LoopError."""
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], stderr=subprocess.PIPE, text=True,
                            env=_child_env())
    last_error = ""
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith("error:"):
            last_error = line[len("error:"):].strip()
    rc = proc.wait()
    if rc not in (0, 1):
        raise LoopError(f"stage {stage}: {module}: {last_error or f'exit status {rc}'}")
    return rc


# ----------------------------------------------------------------------------------------------- stages


class Loop:
    """One job: the config, the run directory and the judge; `run()` goes through the stages."""

    def __init__(self, cfg: Any, stages: tuple[str, ...], rounds: int) -> None:
        if not cfg.run_dir or "://" in cfg.run_dir:
            raise ConfigError(f"config.run_dir: must be a local directory, got {cfg.run_dir!r} (the stages "
                              "read and write gs:// through their own options; see docs/longreward.md)")
        if rounds < 1:
            raise ConfigError(f"--rounds: must be >= 1, got {rounds}")
        self.cfg, self.stages, self.rounds = cfg, stages, rounds
        self.run_dir = Path(cfg.run_dir)
        self.demo = not cfg.prompts
        data = self.run_dir / "data"
        # str, not Path: prompts may be gs:// (every stage reads them through lr_jax.io).
        self.prompts = str(data / "prompts.jsonl") if self.demo else cfg.prompts
        self.eval_prompts = str(data / "prompts_eval.jsonl") if self.demo else cfg.eval_prompts
        self.sft_data = data / "sft.jsonl"
        # The trainer builds the tiny demo tokenizer when given none: a real run must name its own (an HF
        # checkpoint dir holds one, so init_from serves).
        self.tokenizer = cfg.tokenizer or (str(data / "tokenizer") if self.demo else cfg.init_from)
        if not self.tokenizer:
            raise ConfigError("config.tokenizer: required when config.prompts is set (a local tokenizer "
                              "dir, e.g. the HF checkpoint's)")
        if not self.demo and not cfg.eval_prompts and "eval" in stages:
            raise ConfigError("config.eval_prompts: required for the eval stage when config.prompts is set")
        self.judge = Judge(cfg) if {"score", "eval"} & set(stages) else None
        # One judge cache for the whole run: score, eval/before, eval/after and every round. The same
        # question (a query and an answer both policies give, helpfulness of a query seen in training and
        # held out, round 2's repeats of round 1's answers) is paid once.
        self.cache = self.run_dir / "judge_cache.sqlite"
        # Validate every stage's options now, before any work: a typo must not cost an SFT run.
        if "sft" in stages and not cfg.init_from:
            self._sft_config()
        if "dpo" in stages:
            self._dpo_config(Paths(self.run_dir, 1), "<policy>")
        for where, opts in (("sample", _as_dict(cfg.sample)), ("eval.sample", self._eval_options())):
            sample_args(opts, model="m", prompts="p", out="o", tokenizer=None, name="n", where=where)

    # ------------------------------------------------------------ configs
    def _sft_config(self) -> Any:
        d = self.run_dir / "sft"
        return training_config(self.cfg.sft, "sft", **{
            "data.path": str(self.cfg.sft.data.path or self.sft_data),
            "data.tokenizer": self.tokenizer, "train.out_dir": str(d), "train.export_hf_dir": str(d / "hf")})

    def _dpo_config(self, p: Paths, policy: str) -> Any:
        d = p.stage("dpo")
        fields = {"data.path": str(p.stage("pairs")), "data.tokenizer": self.tokenizer,
                  "train.out_dir": str(d), "train.export_hf_dir": str(d / "hf"), "train.init_from": policy}
        if self.cfg.dpo.data.mixture:  # the judged pairs plus other sources: "{pairs}=0.7,short/=0.3"
            if "{pairs}" not in self.cfg.dpo.data.mixture:
                raise ConfigError("config.dpo.data.mixture: name this round's judged pairs as {pairs} (e.g. "
                                  "'{pairs}=0.7,gs://b/short_prefs=0.3')")
            fields["data.mixture"] = self.cfg.dpo.data.mixture.replace("{pairs}", str(p.stage("pairs")))
            fields["data.path"] = ""
        if self.cfg.dpo_epochs < 0:
            raise ConfigError(f"config.dpo_epochs: must be >= 0, got {self.cfg.dpo_epochs}")
        if self.cfg.dpo_epochs and is_done(p.stage("pairs")):
            pairs = read_marker(p.stage("pairs"))["pairs"]
            batch = self.cfg.dpo.data.batch_size
            fields["train.steps"] = max(1, math.ceil(self.cfg.dpo_epochs * pairs / batch))
        return training_config(self.cfg.dpo, "dpo", **fields)

    def _eval_options(self) -> dict[str, Any]:
        return {**_as_dict(self.cfg.sample), **_as_dict(self.cfg.eval.sample)}

    # ------------------------------------------------------------ driver
    def run(self) -> dict[str, Any]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(_as_dict(self.cfg), indent=1, default=str))
        plan = [("sft", 1)] + [(s, r) for r in range(1, self.rounds + 1) for s in ROUND_STAGES]
        plan = [(s, r) for s, r in plan if s in self.stages]
        t0 = time.time()
        try:
            if self.demo:
                self._demo_data()
            for i, (stage, r) in enumerate(plan, 1):
                p = Paths(self.run_dir, r)
                d = p.stage(stage)
                tag = f"stage {i}/{len(plan)} {stage}" + (f" (round {r})" if self.rounds > 1 else "")
                if is_done(d):
                    _log(f"{tag}: done ({d / MARKER})")
                    continue
                _log(f"{tag}: running in {d}")
                ts = time.time()
                try:
                    info = getattr(self, f"_stage_{stage}")(p)
                except LoopError:
                    raise
                except LrJaxError as e:
                    raise LoopError(f"stage {stage}: {' '.join(str(e).split())}") from None
                if info is None:  # the stage stopped early (SIGTERM): no marker, exit 0, resume later
                    _log(f"{tag}: stopped before the end; re-run to resume")
                    return {}
                info["seconds"] = round(time.time() - ts, 1)
                commit(d, info)
                _log(f"{tag}: committed in {info['seconds']}s")
        finally:
            if self.judge is not None:
                self.judge.close()
        summary = self._summary()
        if summary:
            _log(f"all stages done in {time.time() - t0:.0f}s this run")
        return summary

    def _demo_data(self) -> None:
        """The demo's prompts (train, held-out, SFT with answers) and tokenizer, deterministic by seed."""
        d = self.run_dir / "data"
        if is_done(d):
            return
        from lr_jax.data import demo

        c = self.cfg.demo
        self._check_demo()
        kw = dict(context_tokens=c.context_tokens, num_facts=c.num_facts, num_values=c.num_values)
        # Disjoint id prefixes (and random streams): the held-out prompts are never trained on.
        sets = {"sft.jsonl": demo.make_synthetic_pairs(c.sft_examples, c.seed, id_prefix="sft", **kw),
                "prompts.jsonl": demo.make_synthetic_pairs(c.train_prompts, c.seed, id_prefix="loop", **kw),
                "prompts_eval.jsonl": demo.make_synthetic_pairs(c.eval_prompts, c.seed, id_prefix="heldout",
                                                                **kw)}
        d.mkdir(parents=True, exist_ok=True)
        for name, pairs in sets.items():
            rows = demo.pairs_to_prompts(pairs)
            if c.answer_style == "value":
                for row in rows:
                    row["answer"] = value_answer(row["answer"])
            (d / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        demo.build_tiny_tokenizer(str(d / "tokenizer"))
        commit(d, {"source": "lr_jax.data.demo", **_as_dict(c)})

    def _check_demo(self) -> None:
        if self.cfg.demo.answer_style not in ("value", "sentence"):
            raise ConfigError(f"config.demo.answer_style: must be 'value' or 'sentence', got "
                              f"{self.cfg.demo.answer_style!r}")

    def _policy(self, r: int) -> str:
        """The policy that round `r` samples from: the SFT policy (or init_from), else round r-1's DPO."""
        if r > 1:
            return str(Paths(self.run_dir, r - 1).stage("dpo") / "hf")
        if self.cfg.init_from:
            return self.cfg.init_from
        d = self.run_dir / "sft"
        if not is_done(d):
            raise LoopError(f"stage sample: needs the SFT policy ({d / MARKER} missing): run --stages sft "
                            "first, or set config.init_from")
        return read_marker(d)["policy"]

    def _need(self, stage: str, p: Paths, before: str) -> Path:
        d = p.stage(before)
        if not is_done(d):
            raise LoopError(f"stage {stage}: needs stage {before} ({d / MARKER} missing); run --stages "
                            f"{before} first")
        return d

    def _train(self, cfg: Any) -> dict[str, Any] | None:
        from lr_jax.training.checkpoint import Checkpointer
        from lr_jax.training.trainer import run

        if cfg.train.distributed and not _distributed_started():
            import jax

            t = cfg.train  # unset fields = auto-detection (TPU pods), as in `python -m lr_jax.train`
            jax.distributed.initialize(coordinator_address=t.coordinator_address or None,
                                       num_processes=t.num_processes or None,
                                       process_id=t.process_id if t.process_id >= 0 else None)
        run(cfg)
        ckpt = Checkpointer(cfg.train.checkpoint_dir or os.path.join(cfg.train.out_dir, "checkpoints"),
                            keep=cfg.train.keep_checkpoints, async_save=False)
        try:
            step = ckpt.latest_step()
        finally:
            ckpt.close()
        if step != cfg.train.steps:  # SIGTERM saved a checkpoint mid-run: not finished
            return None
        metrics = []
        path = Path(cfg.train.out_dir) / "metrics.jsonl"
        if path.exists():
            metrics = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        last = metrics[-1] if metrics else {}
        return {"policy": cfg.train.export_hf_dir, "steps": step,
                "final": {k: v for k, v in last.items() if k.startswith("eval_") or k in ("loss", "step")}}

    def _stage_sft(self, p: Paths) -> dict[str, Any] | None:
        if self.cfg.init_from:
            return {"policy": self.cfg.init_from, "skipped": "config.init_from is set"}
        return self._train(self._sft_config())

    def _sample(self, options: dict[str, Any], *, policy: str, prompts: str, out: Path, name: str,
                where: str) -> dict[str, Any]:
        from lr_jax.sample import run

        out.parent.mkdir(parents=True, exist_ok=True)
        args = sample_args(options, model=policy, prompts=prompts, out=str(out),
                           tokenizer=self.tokenizer or None, name=name, where=where)
        return dict(run(args).__dict__)

    def _stage_sample(self, p: Paths) -> dict[str, Any]:
        policy = self._policy(p.round)
        stats = self._sample(_as_dict(self.cfg.sample), policy=policy, prompts=self.prompts,
                             out=p.stage("sample") / "samples.jsonl", name=f"policy-round{p.round}",
                             where="sample")
        return {"policy": policy, "samples": str(p.stage("sample") / "samples.jsonl"), "stats": stats}

    def _stage_score(self, p: Paths) -> dict[str, Any]:
        samples = self._need("score", p, "sample") / "samples.jsonl"
        assert self.judge is not None
        summary = self.judge.score("score", self.prompts, samples, p.stage("score"), cache=self.cache)
        return {"scored": str(p.stage("score") / "scored.jsonl"), "judge": self.judge.info(),
                "summary": summary}

    def _stage_pairs(self, p: Paths) -> dict[str, Any]:
        scored = self._need("pairs", p, "score")
        out = p.stage("pairs")
        _run_module("pairs", "judge.pairs", ["--scored", str(scored), "--prompts", self.prompts,
                                             "--out", str(out), *shlex.split(self.cfg.pairs.args)])
        meta = json.loads((out / "metadata.json").read_text())
        n = meta.get("num_records")
        if not n:
            raise LoopError(f"stage pairs: {out}: no preference pairs were made (see {out}/metadata.json); "
                            "sample more responses or lower --min-responses in config.pairs.args")
        return {"pairs": n, "records": str(out)}

    def _stage_dpo(self, p: Paths) -> dict[str, Any] | None:
        self._need("dpo", p, "pairs")
        return self._train(self._dpo_config(p, self._policy(p.round)))

    def _stage_eval(self, p: Paths) -> dict[str, Any]:
        dpo = self._need("eval", p, "dpo")
        assert self.judge is not None
        answers = {}
        from lr_jax.io import jsonl

        for _, row in jsonl.read_jsonl(self.eval_prompts, error=LoopError):
            answers[str(row["id"])] = row.get("answer")
        opts = self._eval_options()
        out: dict[str, Any] = {"judge": self.judge.info(), "decoding": {
            "temperature": opts["temperature"], "num_samples": opts["num_samples"]}}
        for tag, policy in (("before", self._policy(p.round)), ("after", read_marker(dpo)["policy"])):
            d = p.stage("eval") / tag
            self._sample(self._eval_options(), policy=policy, prompts=self.eval_prompts,
                         out=d / "samples.jsonl", name=f"{tag}-round{p.round}", where="eval.sample")
            self.judge.score("eval", self.eval_prompts, d / "samples.jsonl", d / "score", cache=self.cache)
            m = eval_metrics(d / "score" / "scored.jsonl", answers)
            m["policy"] = policy
            (d / "metrics.json").write_text(json.dumps(m, indent=1))
            out[tag] = m
        return out

    # ------------------------------------------------------------ summary
    def _summary(self) -> dict[str, Any]:
        rounds = []
        for r in range(1, self.rounds + 1):
            p = Paths(self.run_dir, r)
            if not (is_done(p.stage("eval")) and is_done(p.stage("pairs"))):
                return {}
            ev = read_marker(p.stage("eval"))
            rounds.append({"round": r, "pairs": read_marker(p.stage("pairs"))["pairs"],
                           "before": ev["before"], "after": ev["after"]})
        first = read_marker(Paths(self.run_dir, 1).stage("eval"))
        judge = first["judge"]
        keep = ("reward", "accuracy", "prompts", "dimensions", "scored")
        summary = {"eval": {"before": {k: rounds[0]["before"][k] for k in keep},
                            "after": {k: rounds[-1]["after"][k] for k in keep}},
                   "pairs": sum(x["pairs"] for x in rounds), "judge": judge, "rounds": rounds}
        if "decoding" in first:
            summary["eval"]["decoding"] = first["decoding"]
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        table = render_table(summary)
        (self.run_dir / "summary.md").write_text(table + "\n")
        print(table)
        with contextlib.suppress(ImportError):
            plot_summary(summary, self.run_dir / "eval.png")
        return summary


# ----------------------------------------------------------------------------------------------- metrics


def value_answer(sentence: str) -> str:
    """"The capital of Veloria is Ashford." -> "Ashford.": the demo's answer sentences all end in the value.

    The demo's default answer style: a 2-layer model learns within CPU minutes to copy a value from the
    document, not to restate a two-token name from the query as well (measured: 400 SFT steps still
    answered "Mona Petrov ..." for every person), and the value is what the question asks.
    """
    return sentence.rstrip(".").rsplit(" ", 1)[-1] + "."


_NORM_RE = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: "The capital is X." == "the capital is x"."""
    return " ".join(_NORM_RE.sub(" ", text.lower()).split())


def last_rows(path: Path) -> dict[str, dict[str, Any]]:
    """The last line per response id of a scored.jsonl (a resumed or --retry-failed run appends)."""
    from lr_jax.io import jsonl

    rows: dict[str, dict[str, Any]] = {}
    for _, row in jsonl.read_jsonl(str(path), error=LoopError):
        rows[row["id"]] = row
    return rows


def eval_metrics(scored: Path, answers: dict[str, str | None]) -> dict[str, Any]:
    """Mean judged reward (and per dimension) over the held-out responses, exact-answer accuracy.

    A dimension that failed is left out of its mean (never a number); accuracy is over the prompts that
    have a reference answer, null when none has one.
    """
    rows = sorted(last_rows(scored).values(), key=lambda r: r["id"])

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    dims = {d: mean([r["scores"][d] for r in rows if r["scores"].get(d) is not None]) for d in DIMENSIONS}
    rewards = [r["scores"]["reward"] for r in rows if r["scores"].get("reward") is not None]
    hits = [normalize(r["response"]) == normalize(answers[r["prompt_id"]]) for r in rows
            if answers.get(r["prompt_id"])]
    return {"reward": mean(rewards), "dimensions": dims, "accuracy": mean([float(h) for h in hits]),
            "prompts": len({r["prompt_id"] for r in rows}), "scored": len(rewards),
            "with_reference": len(hits)}


def render_table(summary: dict[str, Any]) -> str:
    """The held-out comparison as a Markdown table (judged reward 0–10, each dimension, accuracy)."""
    b, a = summary["eval"]["before"], summary["eval"]["after"]
    judge = summary["judge"]
    head = f"judge: {judge.get('label', judge['model'])}"
    counts = f"held-out prompts: {b['prompts']}; preference pairs trained on: {summary['pairs']}"
    dec = summary["eval"].get("decoding")
    if dec:
        how = "greedy" if not dec["temperature"] else \
            f"temperature {dec['temperature']:g} (the same sampler seeds for both policies)"
        counts += f"; held-out answers: {dec['num_samples']} per prompt, {how}"
    lines = [head, "", counts, "",
             "| policy | reward | " + " | ".join(DIMENSIONS) + " | exact-answer accuracy |",
             "|---|---:|" + "---:|" * len(DIMENSIONS) + "---:|"]

    def f(x: float | None, pct: bool = False) -> str:
        return "n/a" if x is None else f"{100 * x:.1f} %" if pct else f"{x:.2f}"

    for name, m in (("SFT (before DPO)", b), ("DPO (after)", a)):
        lines.append(f"| {name} | {f(m['reward'])} | " + " | ".join(f(m['dimensions'][d]) for d in DIMENSIONS)
                     + f" | {f(m['accuracy'], True)} |")
    delta = lambda x, y: None if x is None or y is None else y - x
    dr, da = delta(b["reward"], a["reward"]), delta(b["accuracy"], a["accuracy"])
    lines.append(f"| Δ | {'n/a' if dr is None else f'{dr:+.2f}'} | "
                 + " | ".join("n/a" if delta(b['dimensions'][d], a['dimensions'][d]) is None
                              else f"{a['dimensions'][d] - b['dimensions'][d]:+.2f}" for d in DIMENSIONS)
                 + f" | {'n/a' if da is None else f'{100 * da:+.1f} pt'} |")
    return "\n".join(lines)


def plot_summary(summary: dict[str, Any], path: Path) -> None:
    """Bar chart: reward and each dimension (0–10) and accuracy (×10), SFT vs DPO; the judge in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, a = summary["eval"]["before"], summary["eval"]["after"]
    labels = ["reward", *DIMENSIONS, "accuracy ×10"]

    def vals(m: dict[str, Any]) -> list[float]:
        acc = m["accuracy"]
        return [m["reward"] or 0.0, *[m["dimensions"][d] or 0.0 for d in DIMENSIONS],
                10 * acc if acc is not None and not math.isnan(acc) else 0.0]

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], vals(b), 0.4, label="SFT (before DPO)")
    ax.bar([x + 0.2 for x in xs], vals(a), 0.4, label="DPO (after)")
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 10)
    judge = summary["judge"]
    ax.set_title(f"held-out: {b['prompts']} prompts, {summary['pairs']} pairs; judge: "
                 f"{judge.get('label', judge['model'])}", fontsize=8)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- CLI

USAGE = """usage: python -m lr_jax.longreward --config CONFIG.py [--stages a,b] [--rounds K]
       [--config.FIELD=VALUE ...]

The LongReward loop as one resumable job: sft -> sample -> score -> pairs -> dpo -> eval.

  --config PATH      a configs/*.py file with get_config() (e.g. configs/cpu_longreward.py)
  --stages a,b       run only these stages (of: sft, sample, score, pairs, dpo, eval); default all
  --rounds K         repeat sample -> eval K times, each from the previous round's DPO policy (default 1)

config fields (override with --config.FIELD=VALUE):
  --config.run_dir         the run directory (one sub-directory per stage, DONE.json when committed)
  --config.prompts         training prompts JSONL ("" = the demo data); --config.eval_prompts held-out prompts
  --config.tokenizer       local tokenizer dir; --config.init_from an HF dir to start from (skips sft)
  --config.demo.*          demo data: seed, sft_examples, train_prompts, eval_prompts, context_tokens, ...
  --config.sft.SECTION.F   the SFT stage's trainer config (python -m lr_jax.train --help lists every field)
  --config.dpo.SECTION.F   the DPO stage's trainer config (same schema); --config.dpo.data.mixture=
                           "{pairs}=0.7,DIR=0.3" mixes the judged pairs with other records by weight
  --config.sample.F        lr_jax.sample options: num_samples, temperature, top_p, top_k, max_new_tokens, ...
  --config.eval.sample.F   overrides of config.sample for the held-out eval (default greedy, 1 sample)
  --config.score.base_url, --config.score.model   the OpenAI-compatible judge
  --config.score.scripted  True: the built-in scripted judge server (CPU test mode only)
  --config.score.args      judge.score flags, e.g. "--concurrency 32"; --config.pairs.args judge.pairs flags
"""


def usage() -> str:
    """`--help`: the command, then every `--config.FIELD` of the loop's config with its default."""
    lines = [USAGE, "every field (default; a config file may set other defaults):"]

    def walk(prefix: str, node: Any) -> None:
        for k in sorted(node.keys()):
            v = node[k]
            if hasattr(v, "keys"):
                walk(f"{prefix}{k}.", v)
            else:
                lines.append(f"  --config.{prefix}{k}  ({v!r})")

    walk("", default_config())
    return "\n".join(lines)


def _pop_flag(argv: list[str], name: str) -> tuple[list[str], str | None]:
    out, value, i = [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if a.startswith(name + "="):
            value = a.split("=", 1)[1]
        else:
            out.append(a)
        i += 1
    return out, value


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`lr-longreward`): parse, validate every stage's options, run the loop."""
    from absl import flags, logging
    from ml_collections import config_flags

    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage())
        return
    argv, stages_flag = _pop_flag(argv, "--stages")
    argv, rounds_flag = _pop_flag(argv, "--rounds")
    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file with get_config().",
                                        lock_config=True)
    try:
        flags.FLAGS(argv)
        cfg = flags.FLAGS.config
        if cfg is None:
            raise ConfigError("--config is required (e.g. --config configs/cpu_longreward.py)")
    except Exception as e:  # absl / ml_collections raise several types for bad files, flags and overrides
        msg = " ".join(str(e).replace("\\n", " ").split()).strip("'\"")
        if isinstance(e, (KeyError, AttributeError)):
            msg = f"--config override: unknown key {msg}"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    logging.set_verbosity(logging.WARNING)
    try:
        stages = parse_stages(stages_flag if stages_flag is not None else cfg.stages)
        try:
            rounds = int(rounds_flag) if rounds_flag is not None else int(cfg.rounds)
        except ValueError:
            raise ConfigError(f"--rounds: expected an int, got {rounds_flag!r}") from None
        Loop(cfg, stages, rounds).run()
    except LrJaxError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
