"""`python -m lr_jax.longreward --config configs/x.py [--stages a,b] [--rounds K] [--config.x.y=...]`."""

from __future__ import annotations

import sys
from typing import Any

from lr_jax.cli import arg_parser, load_config, run
from lr_jax.errors import ConfigError

_EXAMPLE = "configs/cpu_longreward.py"

HELP_HEAD = """usage: python -m lr_jax.longreward --config CONFIG.py [--stages a,b] [--rounds K]
       [--config.FIELD=VALUE ...]

The LongReward loop as one resumable job: sft -> sample -> score -> pairs -> dpo -> eval.

  --config PATH      a configs/*.py file with get_config() (e.g. configs/cpu_longreward.py)
  --stages a,b       run only these stages (of: sft, sample, score, pairs, dpo, eval); default all
  --rounds K         repeat sample -> eval K times, each from the previous round's DPO policy (default 1)

config fields (override with --config.FIELD=VALUE):
  --config.run_dir         the run directory (one sub-directory per stage, DONE.json when committed)
  --config.prompts         training prompts JSONL ("" = the demo data); --config.eval_prompts held-out prompts
  --config.tokenizer       local tokenizer dir; --config.init_from an HF dir or .gguf to start from (no sft)
  --config.rerun_changed   True: re-run a stage that ran with other settings, and the stages after it
                           (default: refuse such a run in one line naming the stage and the field)
  --config.demo.*          demo data: seed, sft_examples, train_prompts, eval_prompts, context_tokens, ...
  --config.sft.SECTION.F   the SFT stage's trainer config (python -m lr_jax.train --help lists every field)
  --config.dpo.SECTION.F   the DPO stage's trainer config (same schema); --config.dpo.data.mixture=
                           "{pairs}=0.7,DIR=0.3" mixes the judged pairs with other records by weight
  --config.sample.F        lr_jax.sample options: num_samples, temperature, top_p, top_k, max_new_tokens, ...
  --config.eval.sample.F   overrides of config.sample for the held-out eval (default greedy, 1 sample)
  --config.eval.answer_metric  held-out accuracy rule against each prompt's answer: exact, match or f1
  --config.eval.baseline_dir   share the starting policy's held-out answers between runs (e.g. seeds)
  --config.score.base_url, --config.score.model   the OpenAI-compatible judge
  --config.score.scripted  True: the built-in scripted judge server (CPU test mode only)
  --config.score.args      judge.score flags, e.g. "--concurrency 32"; --config.pairs.args judge.pairs flags
"""


def usage() -> str:
    """`--help`: the command, then every `--config.FIELD` of the loop's config with its default."""
    from lr_jax.longreward.config import default_config

    lines = [HELP_HEAD, "every field (default; a config file may set other defaults):"]

    def walk(prefix: str, node: Any) -> None:
        for k in sorted(node.keys()):
            v = node[k]
            if hasattr(v, "keys"):
                walk(f"{prefix}{k}.", v)
            else:
                lines.append(f"  --config.{prefix}{k}  ({v!r})")

    walk("", default_config())
    return "\n".join(lines)


def _loop(argv: list[str]) -> None:
    from absl import logging

    from lr_jax.longreward.config import parse_stages
    from lr_jax.longreward.loop import Loop

    cfg, rest = load_config(argv, example=_EXAMPLE)  # the one config path of train, plan and the loop
    parser = arg_parser("python -m lr_jax.longreward")
    parser.add_argument("--stages", default=None)
    parser.add_argument("--rounds", default=None)
    flags = parser.parse_args(rest)
    logging.set_verbosity(logging.WARNING)
    stages = parse_stages(flags.stages if flags.stages is not None else cfg.stages)
    try:
        rounds = int(flags.rounds) if flags.rounds is not None else int(cfg.rounds)
    except ValueError:
        raise ConfigError(f"--rounds: expected an int, got {flags.rounds!r}") from None
    Loop(cfg, stages, rounds).run()


def main(argv: list[str] | None = None) -> None:
    """Parse, validate every stage's options, run the loop; an input error is one `error:` line, exit 2."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage())
        return
    code = run(lambda: _loop(argv[1:]))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
