"""The one command-line path of the config-driven tools (`lr_jax.train`, `lr_jax.plan`, the loop):
a config file plus ``--config.a.b=value`` overrides → a `ConfigDict` → (the caller's typed config) → on any
bad input, exactly one ``error: ...`` line on stderr and exit status 2.

API (JAX-free; absl / ml_collections are imported only when a config is parsed):

- ``load_config(argv, example=..., flag="config") -> (ConfigDict, rest)``: ``argv`` without the program name.
  ``--config PATH`` / ``--config=PATH`` (``PATH:ARG`` calls ``get_config(ARG)``, as ml_collections does) and
  every ``--config.a.b=V`` / ``--config.a.b V`` are consumed; the other arguments come back in ``rest`` for
  the tool's own flags (`arg_parser`). Raises `ConfigError` with one line naming the flag, the file or the
  dotted key: a missing or unreadable file, a file that fails to load, an unknown key (``--config.train.lrr:
  unknown key 'lrr' in section 'train'; did you mean 'lr'?``), a value of the wrong type.
- ``arg_parser(prog)``: an argparse parser whose usage errors raise `ConfigError` (the same one line).
- ``run(body) -> int``: call ``body()``; an `LrJaxError` becomes ``error: <message>`` (one line) and 2.

A tool's ``main`` is then: ``return run(lambda: work(*load_config(argv[1:], example=...)))``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from lr_jax.errors import USAGE_EXIT, ConfigError, LrJaxError


def run(body: Callable[[], int | None]) -> int:
    """Run a CLI body; an `LrJaxError` becomes one ``error: <message>`` line on stderr and exit status 2."""
    try:
        return int(body() or 0)
    except LrJaxError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return USAGE_EXIT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def arg_parser(prog: str) -> argparse.ArgumentParser:
    """argparse for a tool's own flags (besides ``--config``); a usage error raises `ConfigError`."""
    return _Parser(prog=prog, add_help=False, allow_abbrev=False)


def _split(argv: Sequence[str], flag: str) -> tuple[str | None, list[tuple[str, str | None]], list[str]]:
    """(config path, [(override key, value or None)], other arguments)."""
    path: str | None = None
    overrides: list[tuple[str, str | None]] = []
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        takes_next = not eq and i + 1 < len(args) and not args[i + 1].startswith("-")
        if name in (f"--{flag}", f"-{flag}"):
            if eq:
                path = value
            elif takes_next:
                path, i = args[i + 1], i + 1
            else:
                raise ConfigError(f"--{flag}: needs a file (e.g. --{flag}=configs/cpu_dpo.py)")
        elif name.startswith((f"--{flag}.", f"-{flag}.")):
            key = name.split(".", 1)[1]
            if eq:
                overrides.append((key, value))
            elif takes_next:
                overrides.append((key, args[i + 1]))
                i += 1
            else:
                overrides.append((key, None))  # a bare boolean: --config.train.plot
        else:
            rest.append(a)
        i += 1
    return path, overrides, rest


def _unknown_key(base: Any, key: str, flag: str) -> str | None:
    """The message for the first part of dotted ``key`` that ``base`` lacks (None if every part exists)."""
    node, where = base, []
    for part in key.split("."):
        if not hasattr(node, "keys"):
            section = ".".join(where)
            return (f"--{flag}.{key}: '{section}' is {node!r}, not a section; it has no key {part!r} (set "
                    f"the whole section in the config file)")
        known = list(node.keys())
        if part not in known:
            section = f"section '{'.'.join(where)}'" if where else "the config"
            close = difflib.get_close_matches(part, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (keys: {', '.join(known)})"
            return f"--{flag}.{key}: unknown key {part!r} in {section}{hint}"
        node, where = node[part], [*where, part]
    return None


def _load(path: str, overrides: Sequence[tuple[str, str | None]], flag: str) -> Any:
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", f"--{flag}={path}"]
    for key, value in overrides:
        argv.append(f"--{flag}.{key}" if value is None else f"--{flag}.{key}={value}")
    # Private flag values and argv (not absl's global FLAGS and sys.argv, where ml_collections looks for
    # overrides by default): parsing twice in one process works, and only these arguments count.
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(flag, None, "a configs/*.py file with get_config()", flag_values=fv,
                                    lock_config=True, sys_argv=argv)
    fv(argv)
    return getattr(fv, flag)


def load_config(argv: Sequence[str], *, example: str, flag: str = "config") -> tuple[Any, list[str]]:
    """(ConfigDict of ``--config`` with every ``--config.*`` override applied, the other arguments).

    ``argv`` is without the program name. Raises `ConfigError` (one line naming the flag, file or key)."""
    path, overrides, rest = _split(argv, flag)
    if not path:
        raise ConfigError(f"--{flag} is required (e.g. --{flag} {example})")
    file = path.split(":", 1)[0]
    if not os.path.exists(file):
        raise ConfigError(f"--{flag} {file}: no such file")
    if not os.path.isfile(file) or not os.access(file, os.R_OK):
        raise ConfigError(f"--{flag} {file}: not a readable file")
    try:
        base = _load(path, (), flag)
    except Exception as e:  # the file's own code failed: SyntaxError, ImportError, no get_config, ...
        cause = e.__cause__ or e.__context__ or e
        raw = str(cause).replace("\\n", "\n")
        if "Traceback (most recent call last)" in raw:  # ml_collections embeds get_config()'s traceback
            msg = [ln for ln in raw.splitlines() if ln.strip()][-1].strip()  # "ValueError: boom"
        else:
            msg = f"{type(cause).__name__}: {_one_line(cause)}"
        raise ConfigError(f"--{flag} {file}: could not load it: {msg}") from None
    if base is None:
        raise ConfigError(f"--{flag} {file}: get_config() returned None")
    for key, _ in overrides:
        problem = _unknown_key(base, key, flag)
        if problem:
            raise ConfigError(problem)
    if not overrides:
        return base, rest
    try:
        return _load(path, overrides, flag), rest
    except Exception as e:  # absl: a value that does not parse as the field's type
        raise ConfigError(_one_line(e)) from None


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).replace("\\n", " ").split())
    if isinstance(e, KeyError) and len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":
        msg = msg[1:-1]  # KeyError quotes its text
    return msg.replace("\\'", "'")
