"""Options dataclasses: the one source of every default, bound and help text of the CLIs (judge, lr_jax).

A field declared with `option(...)` carries its flag name, help, bounds and choices in its metadata.
`add_flags` turns a dataclass into argparse flags (the default shown in ``--help`` is the field's default, so
no default is written twice), `from_args` builds the dataclass back from the parsed namespace, and `validate`
checks the same bounds for callers of the Python API (``__post_init__``). Numbers are checked when the flag
is parsed: finite, and inside the field's range — a ``--concurrency 0`` that would wait forever, or a
``--rpm nan``, is refused at once with one line instead.

`OneLineParser` is argparse with one change: a usage error is one ``<prog>: error: ...`` line (exit 2), like
every other input error of the project, not a usage dump.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import typing
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn, TypeVar

from lr_jax.errors import USAGE_EXIT, LrJaxError

D = TypeVar("D")

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    help: str = "",
    flag: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[str] | None = None,
    cli: bool = True,
    default_factory: Any = _MISSING,
    **field_kw: Any,
) -> Any:
    """A dataclass field with CLI metadata. ``ge``/``gt``/``le``/``lt`` bound numbers (None = unbounded on
    that side); ``cli=False`` keeps a field out of the command line (e.g. an API key, which must not be a
    flag)."""
    meta = {"help": help, "flag": flag, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices,
            "cli": cli}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta, **field_kw)
    return dataclasses.field(default=default, metadata=meta, **field_kw)


def flag_of(f: dataclasses.Field[Any]) -> str:
    """The command-line flag of a field: its ``flag`` metadata, else ``--`` + the name with dashes."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _base_type(tp: Any) -> tuple[type, bool]:
    """(int/float/str/bool/other, optional?) of a resolved annotation such as ``float | None``."""
    args = typing.get_args(tp)
    optional = type(None) in args
    if args and optional:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else object
    return (tp if isinstance(tp, type) else object), optional


def _bounds_text(meta: typing.Mapping[str, Any]) -> str:
    def num(v: float) -> str:  # an int bound in full: 4294967295, not 4.29497e+09
        return str(v) if isinstance(v, int) else f"{v:g}"

    parts = []
    if meta.get("gt") is not None:
        parts.append(f"> {num(meta['gt'])}")
    if meta.get("ge") is not None:
        parts.append(f">= {num(meta['ge'])}")
    if meta.get("le") is not None:
        parts.append(f"<= {num(meta['le'])}")
    if meta.get("lt") is not None:
        parts.append(f"< {num(meta['lt'])}")
    return " and ".join(parts)


def check_number(value: Any, kind: type, meta: typing.Mapping[str, Any]) -> None:
    """Raise ValueError (message without the name) unless ``value`` is a finite ``kind`` within bounds."""
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
    ok = (
        (meta.get("gt") is None or value > meta["gt"])
        and (meta.get("ge") is None or value >= meta["ge"])
        and (meta.get("le") is None or value <= meta["le"])
        and (meta.get("lt") is None or value < meta["lt"])
    )
    if not ok:
        raise ValueError(f"must be {_bounds_text(meta)}, got {value!r}")


def validate(obj: Any, error: type[Exception]) -> None:
    """Check every bounded/choice field of the dataclass instance ``obj``; raise ``error`` naming the field
    (and its flag) on the first bad one. None is accepted for optional fields ("unlimited", "off")."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind, optional = _base_type(hints[f.name])
        v = getattr(obj, f.name)
        if v is None and optional:
            continue
        where = f"{f.name} ({flag_of(f)})" if f.metadata.get("cli", True) else f.name
        try:
            if kind in (int, float):
                check_number(v, kind, f.metadata)
            elif f.metadata.get("choices") and v not in f.metadata["choices"]:
                raise ValueError(f"must be one of {', '.join(f.metadata['choices'])}, got {v!r}")
        except ValueError as e:
            raise error(f"{where} {e}") from None


def _arg_type(kind: type, meta: typing.Mapping[str, Any] | None) -> Any:
    """An argparse ``type=``: parse the text, then apply the field's checks (errors become argparse's)."""

    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if meta is None:  # checked later by the caller's own validation
            return v
        try:
            check_number(v, kind, meta)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        return v

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Iterable[str] = (),
    check_bounds: bool = True,
) -> None:
    """One flag per CLI field of the dataclass ``cls``; a field without a default becomes a required flag.

    ``check_bounds=False``: numbers are only parsed here, their bounds left to the dataclass's own
    validation (for a CLI whose errors name the flag and value in the API's words, e.g. `lr_jax.sample`)."""
    hints = typing.get_type_hints(cls)
    skipped = set(skip)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or f.name in skipped or not f.init:
            continue
        kind, _ = _base_type(hints[f.name])
        kw: dict[str, Any] = {"dest": f.name, "help": f.metadata.get("help") or None}
        if f.default is _MISSING and f.default_factory is _MISSING:
            kw["required"] = True
        else:
            kw["default"] = f.default if f.default is not _MISSING else f.default_factory()
        if kind is bool:
            kw["action"] = "store_true"
        elif f.metadata.get("choices"):
            kw["choices"] = list(f.metadata["choices"])
        elif kind in (int, float):
            kw["type"] = _arg_type(kind, f.metadata if check_bounds else None)
            kw["metavar"] = flag_of(f).lstrip("-").upper().replace("-", "_")
            if kw["help"] is not None and "default" in kw and kw["default"] is not None:
                kw["help"] += f" (default {kw['default']})"
        parser.add_argument(flag_of(f), **kw)


def from_args(cls: type[D], args: argparse.Namespace, **extra: Any) -> D:
    """An instance of ``cls`` from the flags `add_flags` made (fields not on the command line keep their
    defaults unless given in ``extra``)."""
    kw = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.init and f.metadata.get("cli", True) and hasattr(args, f.name)
    }
    return cls(**{**kw, **extra})


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default of the dataclass ``cls`` (fields without a default are left out)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not _MISSING:
            out[f.name] = f.default
        elif f.default_factory is not _MISSING:
            out[f.name] = f.default_factory()
    return out


def int_at_least(lo: int) -> Any:
    """An argparse ``type=`` for a CLI-only integer flag with a lower bound."""
    return _arg_type(int, {"ge": lo})


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, ``<prog>: error: <message>``, and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(USAGE_EXIT)


def run_cli(prog: str, body: Any) -> int:
    """Run a judge CLI body; an `LrJaxError` (bad input, config, path, refused server) becomes one
    ``<prog>: error: <message>`` line on stderr and exit status 2. Anything else is a bug: traceback."""
    try:
        return int(body() or 0)
    except LrJaxError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return USAGE_EXIT
