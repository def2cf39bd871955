"""What each stage does, one function per stage, looked up in `STAGE_TABLE` by the loop (`loop.Loop`).

A stage function gets the job (`Loop`: config, paths, judge) and the round's `Paths`, does its work in its
own directory and returns what its commit marker records, or None when it stopped early (SIGTERM during
training: no marker, exit 0, resumed by the next run).

- ``sft``, ``dpo``: `lr_jax.training.trainer.run` in this process, with configs built by the trainer's own
  schema; the trained policy is exported as an HF dir.
- ``sample`` and the decoding half of ``eval``: `lr_jax.sample.run(SampleOptions)` in this process.
- ``score``, ``pairs`` and the judging half of ``eval``: the judge CLIs as subprocesses (`judging`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lr_jax.longreward.config import Paths, as_dict, sample_options
from lr_jax.longreward.judging import LoopError, pairs_argv, run_module, split_args
from lr_jax.longreward.markers import commit, is_done, read_marker
from lr_jax.longreward.report import eval_metrics

if TYPE_CHECKING:
    from lr_jax.longreward.loop import Loop

StageFn = Callable[["Loop", Paths], "dict[str, Any] | None"]


def value_answer(sentence: str) -> str:
    """"The capital of Veloria is Ashford." -> "Ashford.": the demo's answer sentences all end in the value.

    The demo's default answer style: a 2-layer model learns within CPU minutes to copy a value from the
    document, not to restate a two-token name from the query as well (measured: 400 SFT steps still
    answered "Mona Petrov ..." for every person), and the value is what the question asks.
    """
    return sentence.rstrip(".").rsplit(" ", 1)[-1] + "."


def make_demo_data(job: Loop) -> None:
    """The demo's prompts (train, held-out, SFT with answers) and tokenizer, deterministic by seed."""
    d = job.run_dir / "data"
    if is_done(d):
        return
    from lr_jax.data import demo

    c = job.cfg.demo
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
    commit(d, {"source": "lr_jax.data.demo", **as_dict(c), "settings": job.settings("data")})


def train(cfg: Any) -> dict[str, Any] | None:
    """Run the trainer; its marker info, or None when it stopped before `train.steps` (SIGTERM)."""
    from lr_jax.training.checkpoint import Checkpointer
    from lr_jax.training.trainer import run

    run(cfg)  # joins the multi-host job first when train.distributed (trainer.start_distributed)
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


def sample(job: Loop, options: dict[str, Any], *, policy: str, prompts: str, out: Path, name: str,
           where: str) -> dict[str, Any]:
    """`lr_jax.sample.run` on `prompts` into `out` (resumes from the rows already there)."""
    from lr_jax.sample import run

    out.parent.mkdir(parents=True, exist_ok=True)
    opts = sample_options(options, model=policy, prompts=prompts, out=str(out), tokenizer=job.tokenizer,
                          name=name, where=where)
    return dict(run(opts).__dict__)


def stage_sft(job: Loop, p: Paths) -> dict[str, Any] | None:
    if job.cfg.init_from:
        return {"policy": job.cfg.init_from, "skipped": "config.init_from is set"}
    return train(job.sft_config())


def stage_sample(job: Loop, p: Paths) -> dict[str, Any]:
    policy = job.policy(p.round)
    out = p.stage("sample") / "samples.jsonl"
    stats = sample(job, as_dict(job.cfg.sample), policy=policy, prompts=job.prompts, out=out,
                   name=f"policy-round{p.round}", where="sample")
    return {"policy": policy, "samples": str(out), "stats": stats}


def stage_score(job: Loop, p: Paths) -> dict[str, Any]:
    samples = job.need("score", p, "sample") / "samples.jsonl"
    summary = job.judge.score("score", job.prompts, samples, p.stage("score"), job.cache)
    return {"scored": str(p.stage("score") / "scored.jsonl"), "judge": job.judge.info(), "summary": summary}


def stage_pairs(job: Loop, p: Paths) -> dict[str, Any]:
    scored = job.need("pairs", p, "score")
    out = p.stage("pairs")
    run_module("pairs", "judge.pairs", pairs_argv(scored=str(scored), prompts=job.prompts, out=str(out),
                                                  args=split_args(job.cfg.pairs.args, "pairs.args")))
    meta = json.loads((out / "metadata.json").read_text())
    n = meta.get("num_records")
    if not n:
        raise LoopError(f"stage pairs: {out}: no preference pairs were made (see {out}/metadata.json); "
                        "sample more responses or lower --min-responses in config.pairs.args")
    return {"pairs": n, "records": str(out)}


def stage_dpo(job: Loop, p: Paths) -> dict[str, Any] | None:
    job.need("dpo", p, "pairs")
    return train(job.dpo_config(p, job.policy(p.round)))


def stage_eval(job: Loop, p: Paths) -> dict[str, Any]:
    dpo = job.need("eval", p, "dpo")
    return held_out_eval(job, p, job.policy(p.round), read_marker(dpo)["policy"], name=f"round{p.round}")


def held_out_eval(job: Loop, p: Paths, before: str, after: str, *, name: str) -> dict[str, Any]:
    """Held-out answers of the policies `before` and `after` (sampled as ``before-<name>`` /
    ``after-<name>``), judged, with their metrics: the eval stage of every algorithm."""
    from lr_jax.io import jsonl

    prompts = {str(row["id"]): row for _, row in jsonl.read_jsonl(job.eval_prompts, error=LoopError)}
    opts = job.eval_options()
    out: dict[str, Any] = {"judge": job.judge.info(), "decoding": {
        "temperature": opts["temperature"], "num_samples": opts["num_samples"]}}
    for tag, policy in (("before", before), ("after", after)):
        d = p.stage("eval") / tag
        answers = d / "samples.jsonl"
        if tag == "before" and p.round == 1 and job.cfg.eval.baseline_dir:
            # the starting policy's answers, decoded once for the runs that share them (config.py); each
            # run judges them with its own judge (a judgement is tied to its judge's endpoint)
            answers = Path(job.cfg.eval.baseline_dir) / "samples.jsonl"
        sample(job, opts, policy=policy, prompts=job.eval_prompts, out=answers, name=f"{tag}-{name}",
               where="eval.sample")
        job.judge.score("eval", job.eval_prompts, answers, d / "score", job.cache)
        m = eval_metrics(d / "score" / "scored.jsonl", prompts, job.cfg.eval.answer_metric)
        m["policy"] = policy
        (d / "metrics.json").write_text(json.dumps(m, indent=1))
        out[tag] = m
    return out


# The pipeline, explicitly: stage name -> what runs it (order: config.STAGES).
STAGE_TABLE: dict[str, StageFn] = {
    "sft": stage_sft, "sample": stage_sample, "score": stage_score, "pairs": stage_pairs, "dpo": stage_dpo,
    "eval": stage_eval,
}
