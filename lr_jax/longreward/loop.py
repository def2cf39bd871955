"""`Loop`: the job that goes through the stages; it only orchestrates.

It checks every section before the first stage runs, compares each finished (or started) stage's recorded
settings with this run's (`markers.check_settings`), and then, for each stage of the plan, skips it when
committed or runs `stages.STAGE_TABLE[stage]` and commits its marker. What a stage does lives in `stages`,
the judge subprocesses in `judging`, the settings and paths in `config`, the summary in `report`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lr_jax.errors import ConfigError, LrJaxError
from lr_jax.eval.reference import METRICS
from lr_jax.longreward import config as C
from lr_jax.longreward.judging import Judge, LoopError, check_judge_args, log, split_args
from lr_jax.longreward.markers import (
    MARKER,
    StaleStage,
    check_settings,
    commit,
    is_done,
    mark_started,
    move_aside,
    read_marker,
)
from lr_jax.longreward.report import write_summary
from lr_jax.longreward.stages import STAGE_TABLE, make_demo_data


class Loop:
    """One job: the config, the run directory and the judge; `run()` goes through the stages."""

    def __init__(self, cfg: Any, stages: tuple[str, ...], rounds: int) -> None:
        if not cfg.run_dir or "://" in cfg.run_dir:
            raise ConfigError(f"config.run_dir: must be a local directory, got {cfg.run_dir!r} (the stages "
                              "read and write gs:// through their own options; see docs/longreward.md)")
        if rounds < 1:
            raise ConfigError(f"--rounds: must be >= 1, got {rounds}")
        self.grpo = cfg.get("algorithm", "dpo") == "grpo"  # online GRPO: sft → grpo → eval (online.py)
        if cfg.get("algorithm", "dpo") not in C.ALGORITHMS:
            raise ConfigError(f"config.algorithm: must be one of {', '.join(C.ALGORITHMS)}, got "
                              f"{cfg.algorithm!r}")
        if self.grpo and rounds != 1:
            raise ConfigError("--rounds: GRPO is online (config.grpo.iterations), rounds must be 1")
        if stages != C.KNOWN_STAGES:  # an explicit --stages list: each must be one of this algorithm's
            own = C.GRPO_STAGES if self.grpo else C.STAGES
            other = [s for s in stages if s not in own]
            if other:
                raise ConfigError(f"--stages: {', '.join(other)} is not a stage of config.algorithm="
                                  f"{cfg.get('algorithm', 'dpo')!r} (its stages: {', '.join(own)})")
        self.cfg, self.stages, self.rounds = cfg, stages, rounds
        self.run_dir = Path(cfg.run_dir)
        self.demo = not cfg.prompts
        data = self.run_dir / "data"
        # str, not Path: prompts may be gs:// (every stage reads them through lr_jax.io).
        self.prompts = str(data / "prompts.jsonl") if self.demo else cfg.prompts
        self.eval_prompts = str(data / "prompts_eval.jsonl") if self.demo else cfg.eval_prompts
        self.sft_data = data / "sft.jsonl"
        # The trainer builds the tiny demo tokenizer when given none: a real run must name its own (an HF
        # checkpoint dir holds one, so init_from serves; a .gguf's is rebuilt into its cached conversion).
        self.tokenizer = cfg.tokenizer or (str(data / "tokenizer") if self.demo
                                           else _tokenizer_of(cfg.init_from))
        # One judge cache for the whole run: score, eval/before, eval/after and every round. The same
        # question (a query and an answer both policies give, helpfulness of a query seen in training and
        # held out, round 2's repeats of round 1's answers) is paid once.
        self.cache = self.run_dir / "judge_cache.sqlite"
        self._judge: Judge | None = None
        self.validate()

    # ------------------------------------------------------------ before anything runs
    def validate(self) -> None:
        """Every section this run uses, before the first stage: a typo must not cost an SFT run."""
        cfg, stages = self.cfg, self.stages
        if not self.tokenizer:
            raise ConfigError("config.tokenizer: required when config.prompts is set (a local tokenizer "
                              "dir, e.g. the HF checkpoint's)")
        if not self.demo:
            C.check_input_file(cfg.prompts, "prompts")
            if "eval" in stages:
                if not cfg.eval_prompts:
                    raise ConfigError("config.eval_prompts: required for the eval stage when config.prompts "
                                      "is set")
                C.check_input_file(cfg.eval_prompts, "eval_prompts")
        if cfg.demo.answer_style not in ("value", "sentence"):
            raise ConfigError(f"config.demo.answer_style: must be 'value' or 'sentence', got "
                              f"{cfg.demo.answer_style!r}")
        if cfg.dpo_epochs < 0:
            raise ConfigError(f"config.dpo_epochs: must be >= 0, got {cfg.dpo_epochs}")
        if cfg.eval.answer_metric not in METRICS:
            raise ConfigError(f"config.eval.answer_metric: must be one of {', '.join(METRICS)}, got "
                              f"{cfg.eval.answer_metric!r}")
        if "sft" in stages and not cfg.init_from:
            self.sft_config()
        if "dpo" in stages and not self.grpo:
            self.dpo_config(C.Paths(self.run_dir, 1), "<policy>")
        if self.grpo:
            from lr_jax.longreward.online_config import check

            check(cfg)
        for where, opts in (("sample", C.as_dict(cfg.sample)), ("eval.sample", self.eval_options())):
            C.sample_options(opts, model="m", prompts="p", out="o", tokenizer=None, name="n", where=where)
        judged = {"score", "eval", "grpo"} & set(stages)
        if judged:
            if cfg.score.scripted:
                C.check_scripted_faults(cfg.score.scripted_faults)
            self._judge = Judge(cfg, self.run_dir)
        check_judge_args(split_args(cfg.score.args, "score.args") if judged else None,
                         split_args(cfg.pairs.args, "pairs.args") if "pairs" in stages and not self.grpo
                         else None)

    @property
    def judge(self) -> Judge:
        assert self._judge is not None, "the judge is set up for the score and eval stages"
        return self._judge

    def settings(self, stage: str) -> dict[str, Any]:
        return C.settings(self.cfg, stage)

    def plan(self) -> list[tuple[str, int]]:
        """Every (stage, round) of this job in pipeline order, whether --stages runs it or not."""
        if self.grpo:
            return [(s, 1) for s in C.GRPO_STAGES]
        return [("sft", 1)] + [(s, r) for r in range(1, self.rounds + 1) for s in C.ROUND_STAGES]

    def check_recorded_settings(self) -> None:
        """Refuse (or, with config.rerun_changed, re-run) stages that ran with other settings than these."""
        checks = ([("data", 1)] if self.demo else []) + self.plan()
        for i, (stage, r) in enumerate(checks):
            d = C.Paths(self.run_dir, r).stage(stage)
            try:
                check_settings(stage, d, self.settings(stage))
            except StaleStage as e:
                if not self.cfg.rerun_changed:
                    raise
                later = [C.Paths(self.run_dir, r2).stage(s2) for s2, r2 in checks[i:]]
                for s2 in {s for s, _ in checks[i:]} & {"sft", "dpo"}:
                    ckpts = self.cfg[s2].train.checkpoint_dir
                    if ckpts:
                        raise ConfigError(f"config.{s2}.train.checkpoint_dir {ckpts}: re-running {s2} would "
                                          "resume from these checkpoints; remove them first") from None
                dest = move_aside(self.run_dir, later)
                log(f"re-running from stage {stage}: {str(e).split(' (', 1)[0]}; old outputs in {dest}")
                return

    # ------------------------------------------------------------ stage configs
    def sft_config(self) -> Any:
        d = self.run_dir / "sft"
        return C.training_config(self.cfg.sft, "sft", **{
            "data.path": str(self.cfg.sft.data.path or self.sft_data),
            "data.tokenizer": self.tokenizer, "train.out_dir": str(d), "train.export_hf_dir": str(d / "hf")})

    def dpo_config(self, p: C.Paths, policy: str) -> Any:
        d = p.stage("dpo")
        fields = {"data.path": str(p.stage("pairs")), "data.tokenizer": self.tokenizer,
                  "train.out_dir": str(d), "train.export_hf_dir": str(d / "hf"), "train.init_from": policy}
        if self.cfg.dpo.data.mixture:  # the judged pairs plus other sources: "{pairs}=0.7,short/=0.3"
            if "{pairs}" not in self.cfg.dpo.data.mixture:
                raise ConfigError("config.dpo.data.mixture: name this round's judged pairs as {pairs} (e.g. "
                                  "'{pairs}=0.7,gs://b/short_prefs=0.3')")
            fields["data.mixture"] = self.cfg.dpo.data.mixture.replace("{pairs}", str(p.stage("pairs")))
            fields["data.path"] = ""
        if self.cfg.dpo_epochs and is_done(p.stage("pairs")):
            fields["train.steps"] = C.dpo_steps(self.cfg.dpo_epochs, read_marker(p.stage("pairs"))["pairs"],
                                                self.cfg.dpo.data.batch_size)
        return C.training_config(self.cfg.dpo, "dpo", **fields)

    def eval_options(self) -> dict[str, Any]:
        return {**C.as_dict(self.cfg.sample), **C.as_dict(self.cfg.eval.sample)}

    def policy(self, r: int) -> str:
        """The policy that round `r` samples from: the SFT policy (or init_from), else round r-1's DPO."""
        if r > 1:
            return str(C.Paths(self.run_dir, r - 1).stage("dpo") / "hf")
        if self.cfg.init_from:
            return self.cfg.init_from
        d = self.run_dir / "sft"
        if not is_done(d):
            raise LoopError(f"stage sample: needs the SFT policy ({d / MARKER} missing): run --stages sft "
                            "first, or set config.init_from")
        return read_marker(d)["policy"]

    def need(self, stage: str, p: C.Paths, before: str) -> Path:
        d = p.stage(before)
        if not is_done(d):
            raise LoopError(f"stage {stage}: needs stage {before} ({d / MARKER} missing); run --stages "
                            f"{before} first")
        return d

    # ------------------------------------------------------------ driver
    def run(self) -> dict[str, Any]:
        C.check_run_dir(self.run_dir)
        self.check_recorded_settings()
        # Written only now: every stage already run agrees with these settings (or was moved aside).
        (self.run_dir / "config.json").write_text(json.dumps(C.as_dict(self.cfg), indent=1, default=str))
        plan = [(s, r) for s, r in self.plan() if s in self.stages]
        t0 = time.time()
        try:
            if self.demo:
                make_demo_data(self)
            for i, (stage, r) in enumerate(plan, 1):
                if not self.run_stage(stage, r, f"stage {i}/{len(plan)} {stage}"
                                      + (f" (round {r})" if self.rounds > 1 else "")):
                    return {}
        finally:
            if self._judge is not None:
                self._judge.close()
        summary = self.summary()
        if summary:
            log(f"all stages done in {time.time() - t0:.0f}s this run")
        return summary

    def run_stage(self, stage: str, r: int, tag: str) -> bool:
        """Run one stage unless committed; False when it stopped early (SIGTERM: resume on the next run)."""
        p = C.Paths(self.run_dir, r)
        d = p.stage(stage)
        if is_done(d):
            log(f"{tag}: done ({d / MARKER})")
            return True
        log(f"{tag}: running in {d}")
        settings = self.settings(stage)
        mark_started(d, settings)
        ts = time.time()
        try:
            info = self.stage_fn(stage)(self, p)
        except LoopError:
            raise
        except LrJaxError as e:
            raise LoopError(f"stage {stage}: {' '.join(str(e).split())}") from None
        if info is None:  # the stage stopped early (SIGTERM): no marker, exit 0, resume later
            log(f"{tag}: stopped before the end; re-run to resume")
            return False
        info["seconds"] = round(time.time() - ts, 1)
        info["settings"] = settings
        commit(d, info)
        log(f"{tag}: committed in {info['seconds']}s")
        return True

    def stage_fn(self, stage: str) -> Any:
        """What runs `stage`: `stages.STAGE_TABLE`'s, or with GRPO `online.GRPO_STAGE_TABLE`'s where it has
        one."""
        if self.grpo:
            from lr_jax.longreward import online

            return online.GRPO_STAGE_TABLE[stage] if stage in online.GRPO_STAGE_TABLE else STAGE_TABLE[stage]
        return STAGE_TABLE[stage]

    def summary(self) -> dict[str, Any]:
        if self.grpo:
            from lr_jax.longreward import online

            return online.summary(self)
        rounds = []
        for r in range(1, self.rounds + 1):
            p = C.Paths(self.run_dir, r)
            if not (is_done(p.stage("eval")) and is_done(p.stage("pairs"))):
                return {}
            ev = read_marker(p.stage("eval"))
            rounds.append({"round": r, "pairs": read_marker(p.stage("pairs"))["pairs"],
                           "before": ev["before"], "after": ev["after"]})
        return write_summary(self.run_dir, rounds, read_marker(C.Paths(self.run_dir, 1).stage("eval")))


def _tokenizer_of(model: str) -> str:
    """The tokenizer dir of an `init_from` model: the HF dir itself, or a `.gguf`'s cached conversion."""
    if not model.lower().endswith(".gguf"):
        return model
    from lr_jax.convert import tokenizer_dir

    return str(tokenizer_dir(model))
