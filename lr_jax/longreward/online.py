"""Online LongReward: GRPO with the judge as the reward (``config.algorithm = "grpo"``, docs/grpo.md).

The job is ``sft → grpo → eval``. The ``grpo`` stage repeats, for ``config.grpo.iterations`` iterations,
in this process:

1. **sample** G = ``config.sample.num_samples`` responses to each of the iteration's prompts from the current
   policy (`lr_jax.sample.Policy.complete`: each prompt prefilled once; the token ids and their temperature-1
   log-probs recorded), written to ``iter_XXXX/samples.jsonl`` (the Samples format plus ``token_ids`` and
   ``logprobs``);
2. **score** them with the judge exactly as the ``score`` stage does (`judging.Judge.score`: ``judge.score``,
   the run's one answer cache) into ``iter_XXXX/scored.jsonl``; a response's reward is its judged reward
   (0-10), or with ``config.grpo.reference_weight`` w > 0 QwenLong-L1's hybrid ``(1 - w)·judge +
   w·reference`` (`lr_jax.eval.reference`; prompts without an answer keep the judge's). A group with a
   response the judge failed on is left out of the update;
3. **update**: the groups as shared-prefix rows (the prompt once, G branches), ``steps_per_iteration``
   steps of `lr_jax.training.grpo_step.train_step` against the sampler's log-probs;
4. **commit**: ``iter_XXXX/metrics.json``, the checkpoint (policy + optimizer, labelled with the number of
   iterations done), then ``iter_XXXX/DONE.json``.

Resumable after a kill at any point: the checkpoint gives the policy and optimizer of the last finished
iteration; the next iteration re-samples from exactly those weights with the same keys (so the same
responses), the judge cache answers what was already asked, and an iteration killed between its checkpoint
and its marker is committed from its ``metrics.json``. At the end the policy is exported to ``grpo/hf`` and
the ``eval`` stage compares it with the starting policy on the held-out prompts as for DPO.

Layout: ``run_dir/grpo/{iter_XXXX/, checkpoints/, hf/, metrics.jsonl, DONE.json}``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lr_jax.io import jsonl
from lr_jax.io.storage import write_bytes
from lr_jax.longreward.config import Paths, as_dict, sample_options
from lr_jax.longreward.judging import LoopError, log
from lr_jax.longreward.markers import commit, is_done, read_marker
from lr_jax.longreward.online_config import parse
from lr_jax.longreward.report import last_rows

if TYPE_CHECKING:
    from lr_jax.longreward.loop import Loop

# Logged per iteration, named as TRL / verl log them (means over the iteration's optimizer steps).
STEP_METRICS = ("loss", "reward/mean", "reward/std", "frac_reward_zero_std", "kl", "clip_ratio",
                "clip_ratio/low_mean", "clip_ratio/high_mean", "entropy", "advantages/mean",
                "completions/mean_length", "grad_norm")


@functools.lru_cache(maxsize=4)
def _compiled_step(spec: Any, optim: Any, total_steps: int) -> tuple[Any, Any]:
    """(optimizer, jitted `grpo_step.train_step`), one per (spec, optimizer settings): a resumed job in the
    same process (and the tests) reuse the compiled step."""
    import jax

    from lr_jax.training.grpo_step import train_step
    from lr_jax.training.step import make_optimizer

    optimizer, _ = make_optimizer(optim, total_steps)
    return optimizer, jax.jit(lambda st, b, ref: train_step(spec, optimizer, st, b, ref))


def iteration_prompts(prompts: list[dict[str, Any]], i: int, k: int) -> list[dict[str, Any]]:
    """Iteration `i`'s `k` prompts: the file's, in order, cycling (k > len(prompts): each at most once)."""
    k = min(k, len(prompts))
    return [prompts[(i * k + j) % len(prompts)] for j in range(k)]


class Online:
    """The grpo stage of one job: the policy, optimizer and checkpoints, and `run` over the iterations."""

    def __init__(self, job: Loop, p: Paths) -> None:
        import jax
        import jax.numpy as jnp

        from lr_jax.model import AbstractModel, LoRAConfig, lora
        from lr_jax.sample import Policy, prompt_limit
        from lr_jax.training.checkpoint import Checkpointer
        from lr_jax.training.config import OptimConfig
        from lr_jax.training.grpo_step import GRPOSpec
        from lr_jax.training.step import trainable

        self.job, self.d = job, p.stage("grpo")
        self.opts, self.objective = parse(job.cfg.grpo)
        self.start = job.policy(1)
        self.sampling = sample_options(as_dict(job.cfg.sample), model=self.start, prompts=job.prompts,
                                       out=str(self.d / "unused"), tokenizer=job.tokenizer, name="grpo",
                                       where="sample")
        s = self.sampling
        self.prompts = [{**row, "id": str(row["id"])} for _, row in jsonl.read_jsonl(job.prompts,
                                                                                      error=LoopError)]
        self.policy = Policy.load(self.start, tokenizer=job.tokenizer, dtype=s.dtype, mesh="1,1,1",
                                  before_weights=lambda c: prompt_limit(s.max_prompt_tokens, s.max_new_tokens,
                                                                        c, self.start))
        self.limit = prompt_limit(s.max_prompt_tokens, s.max_new_tokens, self.policy.cfg, self.start)
        cfg, params = self.policy.cfg, self.policy.params
        if self.opts.lora_rank:
            cfg = cfg.replace(lora=LoRAConfig(rank=self.opts.lora_rank, alpha=self.opts.lora_alpha))
            params = lora.with_adapters(AbstractModel.of(cfg), params, jax.random.key(self.opts.seed))
        self.cfg = cfg
        model = AbstractModel.of(cfg)
        self.spec = GRPOSpec(model, self.objective, group_size=s.num_samples, max_len=s.max_new_tokens,
                             logprob_chunk_size=self.opts.logprob_chunk_size, dropout_seed=self.opts.seed)
        o = self.opts
        optim = OptimConfig(lr=o.lr, warmup_steps=o.warmup_steps, schedule=o.schedule,
                            weight_decay=o.weight_decay, grad_clip=o.grad_clip)
        self.optimizer, self._step = _compiled_step(self.spec, optim, o.iterations * o.steps_per_iteration)
        self.state = {"params": params, "opt_state": self.optimizer.init(trainable(model, params)),
                      "step": jnp.int32(0)}
        # The KL's reference without LoRA: the starting policy (held as it is; arrays are immutable).
        self.ref = params if self.objective.kl_coef > 0 and not o.lora_rank else None
        self.ckpt = Checkpointer(str(self.d / "checkpoints"), keep=2, async_save=False)

    # ------------------------------------------------------------ one iteration's pieces
    def decode_policy(self) -> None:
        """Point the sampler at the current weights (LoRA adapters merged: one plain model to decode)."""
        from lr_jax.model import lora

        self.policy.cfg, self.policy.params = lora.merge_adapters(self.cfg, self.state["params"])

    def rollout(self, i: int, prompts: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
        """G samples per prompt from the current policy into `out` (written whole, atomically)."""
        from lr_jax.model.decode import row_key
        from lr_jax.sample import Stats, encode

        s, stats = self.sampling, Stats()
        self.decode_policy()
        sampler = {"model": f"grpo-iter{i}", "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed}
        if s.top_k:
            sampler["top_k"] = s.top_k
        encoded = [(p, encode(self.policy.tok, p, self.limit, stats)) for p in prompts]
        live = [(p, ids) for p, ids in encoded if ids is not None]
        if stats.skipped_too_long:
            log(f"grpo iteration {i}: skipped {len(stats.skipped_too_long)} prompt(s) too long for "
                f"{self.limit} tokens: {stats.skipped_too_long[:5]}")
        rows: list[dict[str, Any]] = []
        size = self.policy.round_batch(s.batch_size)
        for b in range(0, len(live), size):
            chunk = live[b:b + size]
            for p, ids in chunk:
                self.policy.check_vocab(ids, f"{self.job.prompts}: prompt id {p['id']!r}")
            # (seed, "id@iteration", k): a prompt seen again in a later iteration gets fresh samples
            keys = [row_key(s.seed, f"{p['id']}@{i}", k) for p, _ in chunk for k in range(s.num_samples)]
            outs = self.policy.complete([ids for _, ids in chunk], keys, num_samples=s.num_samples,
                                        max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                                        top_k=s.top_k, top_p=s.top_p, pad_to=s.pad_to, logprobs=True)
            for (p, ids), group in zip(chunk, outs, strict=True):
                for k, c in enumerate(group):
                    rows.append({"id": f"{p['id']}-{k}", "prompt_id": p["id"], "query": p["query"],
                                 "response": c.text, "sampler": sampler,
                                 "finish_reason": "stop" if c.finished else "length",
                                 "num_tokens": c.num_tokens, "prompt_tokens": len(ids),
                                 "token_ids": list(c.token_ids), "logprobs": list(c.logprobs or ())})
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(str(out), "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n"
                                      for r in rows).encode())
        return rows

    def rewards(self, rows: list[dict[str, Any]], scored: Path) -> tuple[list[list[dict[str, Any]]],
                                                                         dict[str, Any]]:
        """Complete groups (each response with its ``reward``) and the iteration's reward statistics."""
        from lr_jax.eval.reference import hybrid_reward, reference_score

        judged = last_rows(scored)
        by_id = {p["id"]: p for p in self.prompts}
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(r["prompt_id"], []).append(r)
        keep, judge_r, ref_r, failed = [], [], [], 0
        w, metric = self.opts.reference_weight, self.opts.reference_metric
        for pid, group in groups.items():
            scores = [(judged.get(r["id"]) or {}).get("scores", {}).get("reward") for r in group]
            if any(x is None for x in scores):
                failed += 1
                continue
            out = []
            for r, j in zip(group, scores, strict=True):
                ref = reference_score(r["response"], by_id[pid], metric, where=f"{self.job.prompts}: "
                                      f"prompt id {pid!r}") if w > 0 else None
                judge_r.append(j)
                if ref is not None:
                    ref_r.append(ref)
                out.append({**r, "reward": hybrid_reward(j, ref, w) if ref is not None else float(j)})
            keep.append(out)
        mean = lambda xs: round(float(np.mean(xs)), 6) if xs else None
        return keep, {"groups": len(keep), "groups_failed": failed, "reward/judge_mean": mean(judge_r),
                      "reward/reference_mean": mean(ref_r)}

    def update(self, groups: list[list[dict[str, Any]]]) -> dict[str, float]:
        """``steps_per_iteration`` optimizer steps on the groups; the means of `STEP_METRICS`."""
        import jax.numpy as jnp

        from lr_jax.data.packing import segment_length
        from lr_jax.sample import Stats, encode
        from lr_jax.training.grpo_step import make_batch

        by_id = {p["id"]: p for p in self.prompts}
        # the prompt ids the responses were sampled for (encoded and truncated as the sampler did)
        prompts = [encode(self.policy.tok, by_id[g[0]["prompt_id"]], self.limit, Stats()) for g in groups]
        for p, g in zip(prompts, groups, strict=True):
            if p is None or len(p) != g[0]["prompt_tokens"]:
                raise LoopError(f"stage grpo: prompt {g[0]['prompt_id']!r} encodes to other ids than it was "
                                "sampled with (tokenizer changed?)")
        responses = [[r["token_ids"] for r in g] for g in groups]
        longest = max(segment_length(len(p), [len(r) for r in rs]) for p, rs in zip(prompts, responses,
                                                                                    strict=True))
        seq_len = self.opts.seq_len or -(-longest // 64) * 64
        if longest > seq_len:
            raise LoopError(f"stage grpo: config.grpo.seq_len {seq_len} < a group's {longest} tokens (the "
                            "prompt + its G responses); raise it or set 0 (automatic)")
        n = self.opts.prompts_per_iteration  # fixed shapes: [n, G] groups, n rows (a row per group)
        batch = make_batch(prompts, responses, [[r["reward"] for r in g] for g in groups],
                           [[r["logprobs"] for r in g] for g in groups], seq_len=seq_len,
                           max_len=self.spec.max_len, rows=n, pad_id=self.policy.tok.pad_id, num_groups=n)
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        sums: dict[str, float] = {}
        for _ in range(self.opts.steps_per_iteration):
            self.state, m = self._step(self.state, batch, self.ref)
            if float(m["nonfinite"]):
                raise LoopError("stage grpo: non-finite loss or gradient (the update was not applied); "
                                "lower config.grpo.lr")
            for k in STEP_METRICS:
                if k in m:
                    sums[k] = sums.get(k, 0.0) + float(m[k])
        return {k: round(v / self.opts.steps_per_iteration, 6) for k, v in sums.items()}

    # ------------------------------------------------------------ driver
    def run(self) -> dict[str, Any]:
        from lr_jax.training.checkpoint import abstract_like

        o = self.opts
        done = self.ckpt.latest_step() or 0
        if done:
            self.state, _ = self.ckpt.restore(done, abstract_like(self.state))
            log(f"stage grpo: resumed from the checkpoint after iteration {done - 1}")
        judge = self.job.judge
        for i in range(o.iterations):
            it = self.d / f"iter_{i:04d}"
            if is_done(it):
                if i >= done:
                    raise LoopError(f"stage grpo: {it} is committed but {self.d / 'checkpoints'} has no "
                                    f"checkpoint after it (latest: {done}); move {self.d} aside to restart")
                continue
            if i < done:  # killed between the checkpoint and the marker: the update is in the checkpoint
                commit(it, json.loads((it / "metrics.json").read_text()))
                continue
            samples = it / "samples.jsonl"
            batch = iteration_prompts(self.prompts, i, o.prompts_per_iteration)
            rows = self.rollout(i, batch, samples)
            judge.score("grpo", self.job.prompts, samples, it, self.job.cache)
            groups, info = self.rewards(rows, it / "scored.jsonl")
            info = {"iteration": i, **info, **(self.update(groups) if groups else {})}
            write_bytes(str(it / "metrics.json"), json.dumps(info, sort_keys=True).encode())
            self.ckpt.save(i + 1, self.state, {"iterations_done": i + 1}, force=True)
            self.ckpt.wait()
            commit(it, info)
            log(f"grpo iteration {i + 1}/{o.iterations}: reward/mean {info.get('reward/mean')} "
                f"kl {info.get('kl')} clip_ratio {info.get('clip_ratio')} entropy {info.get('entropy')}")
        self.ckpt.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        import jax

        from lr_jax import convert

        metrics = [read_marker(self.d / f"iter_{i:04d}") for i in range(self.opts.iterations)]
        (self.d / "metrics.jsonl").write_text("".join(json.dumps(m, sort_keys=True) + "\n" for m in metrics))
        hf = self.d / "hf"
        convert.to_hf(self.cfg, jax.tree.map(np.asarray, self.state["params"]), hf)
        return {"policy": str(hf), "start": self.start, "iterations": self.opts.iterations,
                "judge": self.job.judge.info(), "metrics": metrics}


def stage_grpo(job: Loop, p: Paths) -> dict[str, Any]:
    if not is_done(job.run_dir / "sft") and not job.cfg.init_from:
        job.need("grpo", p, "sft")
    return Online(job, p).run()


def stage_eval(job: Loop, p: Paths) -> dict[str, Any]:
    """The held-out eval as DPO's (`stages.held_out_eval`): the starting policy vs the GRPO one."""
    from lr_jax.longreward.stages import held_out_eval

    trained = job.need("eval", p, "grpo")
    return held_out_eval(job, p, job.policy(1), read_marker(trained)["policy"], name="grpo")


# config.algorithm = "grpo": these stages replace `stages.STAGE_TABLE`'s of the same name.
GRPO_STAGE_TABLE = {"grpo": stage_grpo, "eval": stage_eval}


def summary(job: Loop) -> dict[str, Any]:
    """``summary.json`` / ``summary.md`` of a finished GRPO job: held-out before vs after, and the reward,
    KL, clip ratio and entropy of every iteration. Prints the tables."""
    from lr_jax.io.records import DIMENSIONS

    p = Paths(job.run_dir, 1)
    if not (is_done(p.stage("eval")) and is_done(p.stage("grpo"))):
        return {}
    ev, g = read_marker(p.stage("eval")), read_marker(p.stage("grpo"))
    keep = ("reward", "accuracy", "prompts", "dimensions", "scored")
    s = {"algorithm": "grpo", "judge": ev["judge"],
         "eval": {"before": {k: ev["before"][k] for k in keep}, "after": {k: ev["after"][k] for k in keep},
                  "decoding": ev["decoding"]},
         "iterations": g["metrics"]}
    (job.run_dir / "summary.json").write_text(json.dumps(s, indent=1))
    f = lambda x, pct=False: "n/a" if x is None else f"{100 * x:.1f} %" if pct else f"{x:.2f}"
    judge = s["judge"]
    lines = [f"judge: {judge.get('label', judge['model'])}", "",
             f"held-out prompts: {ev['before']['prompts']}; GRPO iterations: {len(g['metrics'])}", "",
             "| policy | reward | " + " | ".join(DIMENSIONS) + " | exact-answer accuracy |",
             "|---|---:|" + "---:|" * len(DIMENSIONS) + "---:|"]
    for name, m in (("start (before GRPO)", ev["before"]), ("GRPO (after)", ev["after"])):
        lines.append(f"| {name} | {f(m['reward'])} | " + " | ".join(f(m["dimensions"][d]) for d in DIMENSIONS)
                     + f" | {f(m['accuracy'], True)} |")
    lines += ["", "| iteration | reward/mean | reward/std | kl | clip_ratio | entropy |",
              "|---:|---:|---:|---:|---:|---:|"]
    for m in g["metrics"]:
        lines.append(f"| {m['iteration']} | " + " | ".join(
            f(m.get(k)) if k != "clip_ratio" else f(m.get(k), True)
            for k in ("reward/mean", "reward/std", "kl", "clip_ratio", "entropy")) + " |")
    table = "\n".join(lines)
    (job.run_dir / "summary.md").write_text(table + "\n")
    print(table)
    return s
