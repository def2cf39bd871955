"""`python -m lr_jax.longreward --config configs/x.py [--stages a,b] [--rounds K] [--config.x.y=...]`."""

from __future__ import annotations

import sys
from typing import Any

from lr_jax.errors import ConfigError, LrJaxError

HELP_HEAD = """usage: python -m lr_jax.longreward --config CONFIG.py [--stages a,b] [--rounds K]
       [--config.FIELD=VALUE ...]

The LongReward loop as one resumable job: sft -> sample -> score -> pairs -> dpo -> eval.

  --config PATH      a configs/*.py file with get_config() (e.g. configs/cpu_longreward.py)
  --stages a,b       run only these stages (of: sft, sample, score, pairs, dpo, eval); default all
  --rounds K         repeat sample -> eval K times, each from the previous round's DPO policy (default 1)

config fields (override with --config.FIELD=VALUE):
  --config.run_dir         the run directory (one sub-directory per stage, DONE.json when committed)
  --config.prompts         training prompts JSONL ("" = the demo data); --config.eval_prompts held-out prompts
  --config.tokenizer       local tokenizer dir; --config.init_from an HF dir to start from (skips sft)
  --config.rerun_changed   True: re-run a stage that ran with other settings, and the stages after it
                           (default: refuse such a run in one line naming the stage and the field)
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


def parse_config(argv: list[str]) -> Any:
    """`--config FILE` + `--config.x.y=v` overrides -> the locked ConfigDict; any failure is a ConfigError.

    The one absl / ml_collections block of the loop, kept apart so that the shared `lr_jax/cli.py` can
    replace it.
    """
    from absl import flags, logging
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file with get_config().",
                                        lock_config=True)
    try:
        flags.FLAGS(argv)
        cfg = flags.FLAGS.config
        if cfg is not None:
            cfg.keys()  # a file that failed to load raises only when the config is first used
    except OSError as e:  # ml_collections: "Failed loading config file ... [Errno 2] No such file ..."
        why = str(e).strip().splitlines()[-1].strip()
        raise ConfigError(f"--config: cannot load the config file: {why}") from None
    except Exception as e:  # absl / ml_collections raise several types for bad files, flags and overrides
        msg = " ".join(str(e).replace("\\n", " ").split()).strip("'\"")
        if isinstance(e, (KeyError, AttributeError)):
            msg = f"--config override: unknown key {msg}"
        raise ConfigError(msg) from None
    if cfg is None:
        raise ConfigError("--config is required (e.g. --config configs/cpu_longreward.py)")
    logging.set_verbosity(logging.WARNING)
    return cfg


def main(argv: list[str] | None = None) -> None:
    """Parse, validate every stage's options, run the loop; an input error is one `error:` line, exit 2."""
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage())
        return
    argv, stages_flag = _pop_flag(argv, "--stages")
    argv, rounds_flag = _pop_flag(argv, "--rounds")
    try:
        from lr_jax.longreward.config import parse_stages
        from lr_jax.longreward.loop import Loop

        cfg = parse_config(argv)
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
