"""`python -m lr_jax.train --config configs/x.py [--config.section.key=value ...]`: SFT or DPO training.

The command line only: parse the config file and its overrides, validate, optionally join a multi-host job,
then hand over to `lr_jax.training.trainer`. Every input error ends with one `error:` line and exit code 2.
"""

from __future__ import annotations

import sys

import jax

from lr_jax.errors import ConfigError, LrJaxError
from lr_jax.training.config import from_config_dict
from lr_jax.training.trainer import run


def usage() -> str:
    """`--help`: the command, then every `--config.<section>.<field>` with its type and default."""
    import dataclasses

    from lr_jax.model.config import ModelConfig
    from lr_jax.training.config import Config

    lines = ["usage: python -m lr_jax.train --config CONFIG.py [--config.SECTION.FIELD=VALUE ...]", "",
             "  --config PATH   a configs/*.py file with get_config() (e.g. configs/cpu_dpo.py)", "",
             "overrides (type, default; a config file may set other defaults):"]
    for section in dataclasses.fields(Config):
        cls = ModelConfig if section.name == "model" else section.default_factory
        for f in dataclasses.fields(cls):
            if not f.init or f.name == "source":
                continue
            default = "required" if f.default is dataclasses.MISSING else repr(f.default)
            lines.append(f"  --config.{section.name}.{f.name}  ({f.type}, {default})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`lr-train`): parse `--config` (+ overrides), validate, train.

    Every bad-input error — flag syntax, unknown override key, config type/value, data, checkpoint — ends the
    process with exit code 2 and one `error: ...` line on stderr.
    """
    from absl import flags, logging
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file with get_config().",
                                        lock_config=True)
    argv = sys.argv if argv is None else argv
    if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
        print(usage())
        return
    try:
        flags.FLAGS(argv)
        raw = flags.FLAGS.config  # loads the file (lazily) and applies the overrides
        if raw is None:
            raise ConfigError("--config is required (e.g. --config configs/cpu_dpo.py)")
        raw = raw.to_dict()
    except Exception as e:  # absl / ml_collections raise several types for bad files, flags and overrides
        msg = " ".join(str(e).replace("\\n", " ").split()).replace("\\'", "'")
        while len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":  # KeyError wraps its text in quotes
            msg = msg[1:-1]
        if isinstance(e, (KeyError, AttributeError)):
            msg = f"--config override: unknown key {msg}"
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    try:
        cfg = from_config_dict(raw)
        if cfg.train.distributed:  # must precede any device use
            t = cfg.train  # unset fields (the default) = auto-detection, e.g. on TPU pods
            try:
                jax.distributed.initialize(coordinator_address=t.coordinator_address or None,
                                           num_processes=t.num_processes or None,
                                           process_id=t.process_id if t.process_id >= 0 else None)
            except (ValueError, TypeError, RuntimeError) as e:  # nothing detected / a field missing / no peer
                raise ConfigError(f"config.train.distributed: jax.distributed.initialize failed ("
                                  f"coordinator_address={t.coordinator_address!r}, num_processes="
                                  f"{t.num_processes}, process_id={t.process_id}): {e}") from None
        run(cfg)
    except LrJaxError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
