"""`python -m lr_jax.train --config configs/x.py [--config.section.key=value ...]`: SFT or DPO training.

The command line only: the config file and its overrides (`lr_jax.cli`), the typed config, then
`lr_jax.training.trainer.run` (which joins a multi-host job first when `train.distributed` is set). Every
input error ends with one `error:` line and exit code 2.
"""

from __future__ import annotations

import sys

from lr_jax.cli import load_config, run
from lr_jax.errors import ConfigError

EXAMPLE = "configs/cpu_dpo.py"


def usage() -> str:
    """`--help`: the command, then every `--config.<section>.<field>` with its type and default."""
    import dataclasses

    from lr_jax.model.config import ModelConfig
    from lr_jax.training.config import Config

    lines = ["usage: python -m lr_jax.train --config CONFIG.py [--config.SECTION.FIELD=VALUE ...]", "",
             f"  --config PATH   a configs/*.py file with get_config() (e.g. {EXAMPLE})", "",
             "overrides (type, default; a config file may set other defaults):"]
    for section in dataclasses.fields(Config):
        cls = ModelConfig if section.name == "model" else section.default_factory
        for f in dataclasses.fields(cls):
            if not f.init or f.name == "source":
                continue
            default = "required" if f.default is dataclasses.MISSING else repr(f.default)
            text = f.metadata.get("help")  # the option(...) metadata of the training sections
            lines.append(f"  --config.{section.name}.{f.name}  ({f.type}, {default})" + (f"  {text}" if text
                                                                                          else ""))
    return "\n".join(lines)


def _train(argv: list[str]) -> None:
    from absl import logging

    raw, rest = load_config(argv, example=EXAMPLE)
    if rest:
        raise ConfigError(f"unrecognized arguments: {' '.join(rest)} (options are --config and --config.*)")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    from lr_jax.training.config import from_config_dict
    from lr_jax.training.trainer import run as train

    train(from_config_dict(raw))


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`lr-train`): parse `--config` (+ overrides), validate, train; exit 2 with one
    `error:` line on bad input (flag syntax, unknown override key, config type/value, data, checkpoint)."""
    argv = sys.argv if argv is None else argv
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage())
        return
    code = run(lambda: _train(list(argv[1:])))
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
