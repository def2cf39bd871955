"""The docs cannot rot silently.

For every fenced ``bash`` block in README.md and docs/*.md:

* every ``python -m MODULE ...`` (any interpreter path, e.g. ``.venv/bin/python``), every console script of
  setup.py (``lr-train ...``) and every ``python bench/x.py``-style repository script names a module (script)
  that exists and whose ``--help`` exits 0 (a subcommand such as ``lr_jax.convert hf2flax`` gets its own
  ``--help``); ``scripts/demo.sh`` and ``launch/run.sh`` count as ``lr_jax.train`` (they pass their
  arguments on);
* every ``--long-flag`` the docs pass appears in that ``--help`` output; for ``lr_jax.train`` and
  ``lr_jax.plan`` every ``--config.<section>.<field>=`` override names a field of the typed config schema;
* every repository path a command names (``configs/...``, ``tests/...``, ``bench/...``, ``scripts/...``,
  ``launch/...``, ``notebooks/...``) exists.

And for every doc: each relative link points to an existing file (and, with ``#anchor``, to a heading of that
file); README.md is at most ``README_MAX_LINES`` lines.

``--help`` runs in subprocesses, one per distinct module (or module + subcommand), in parallel.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import typing
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 150

# Modules and doc pages that other branches add; tolerated when absent, checked like any other when present.
# Delete this constant at merge.
EXPECTED_AFTER_MERGE: frozenset[str] = frozenset()

# Entry points whose `--help` does not exit 0 today, with the reason. The test asserts they STILL fail, so
# fixing one turns this test red until its entry is removed here (nothing is skipped silently).
HELP_FAILS_TODAY: dict[str, str] = {}

# Where the typed training config schema lives (`Config`, one dataclass per section). The second entry is the
# path before the package refactor; delete it once lr_jax/training/config.py exists everywhere.
CONFIG_SCHEMA_MODULES = ("lr_jax.training.config",)
TRAIN_MODULE = "lr_jax.train"
# Modules that take a config file plus --config.<section>.<field> overrides of the typed schema.
CONFIG_MODULES = (TRAIN_MODULE, "lr_jax.plan")

# Commands whose arguments are repository paths worth checking.
REPO_PATH = re.compile(r"^(?:configs|tests|bench|scripts|launch|notebooks)/[\w./-]*[\w]$")
SHELL_WORDS = {"do", "then", "else", "time", "exec", "nohup", "env", "sudo", "!"}
# Shell scripts that pass their arguments on to a module: their flags are checked like the module's.
WRAPPERS = {"scripts/demo.sh": "lr_jax.longreward", "launch/run.sh": TRAIN_MODULE}
SEPARATORS = {";", "&", "&&", "|", "||", "(", ")", ";;", "|&"}
HELP_TIMEOUT_S = 120
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)\s*$")  # an opening or closing code fence line


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def console_scripts() -> dict[str, str]:
    """`lr-train` -> `lr_jax.train`, read from setup.py's entry_points."""
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+)\s*=\s*([\w.]+):\w+"', text))


# ----------------------------------------------------------------------------------------------------
# Parsing the docs


@dataclasses.dataclass(frozen=True)
class Command:
    where: str  # "docs/x.md:12"
    module: str  # the python module the command runs, or a repository script path ending in .py
    args: tuple[str, ...]


def bash_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text) of every ```bash / ```sh fenced block."""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2)
        start = i + 1
        j = start
        while j < len(lines) and lines[j].strip() != fence:
            j += 1
        if lang in ("bash", "sh", "shell", "console"):
            yield start + 1, "\n".join(lines[start:j])
        i = j + 1


def logical_lines(block: str, first: int) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; yields (line number, text)."""
    buf, start = "", first
    for k, line in enumerate(block.splitlines()):
        if not buf:
            start = first + k
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        yield start, buf + line
        buf = ""
    if buf:
        yield start, buf


def tokens(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    try:
        return list(lex)
    except ValueError:  # unbalanced quotes: fall back to a plain split
        return line.split("#")[0].split()


def segments(toks: list[str]) -> Iterator[list[str]]:
    seg: list[str] = []
    for t in toks:
        if t in SEPARATORS:
            if seg:
                yield seg
            seg = []
        else:
            seg.append(t)
    if seg:
        yield seg


def is_python(exe: str) -> bool:
    return re.fullmatch(r"python(3(\.\d+)?)?", exe.rsplit("/", 1)[-1]) is not None


def command_of(seg: list[str], where: str, scripts: dict[str, str]) -> Command | None:
    seg = [t for t in seg]
    while seg and (seg[0] in SHELL_WORDS or re.match(r"^[A-Za-z_]\w*=", seg[0])):
        seg.pop(0)
    if not seg:
        return None
    exe = seg[0]
    if is_python(exe):
        rest = seg[1:]
        while rest and rest[0].startswith("-") and not rest[0].startswith("-m"):
            rest.pop(0)  # interpreter options (-u, -X ...)
        if rest and rest[0] == "-m" and len(rest) > 1:
            return Command(where, rest[1], tuple(rest[2:]))
        if rest and rest[0].startswith("-m") and len(rest[0]) > 2:
            return Command(where, rest[0][2:], tuple(rest[1:]))
        if rest and REPO_PATH.match(rest[0]) and rest[0].endswith(".py"):  # python bench/x.py
            return Command(where, rest[0], tuple(rest[1:]))
        return None  # a bare interpreter or a script outside the repository
    if exe in ("bash", "sh") and len(seg) > 1:
        seg = seg[1:]
        exe = seg[0]
    if exe.removeprefix("./") in WRAPPERS:
        return Command(where, WRAPPERS[exe.removeprefix("./")], tuple(seg[1:]))
    name = exe.rsplit("/", 1)[-1]
    if name in scripts:
        return Command(where, scripts[name], tuple(seg[1:]))
    if name == "pytest":
        return Command(where, "pytest", tuple(seg[1:]))
    return None


def all_segments() -> Iterator[tuple[str, list[str]]]:
    for path in doc_files():
        for first, block in bash_blocks(path):
            for lineno, line in logical_lines(block, first):
                for seg in segments(tokens(line)):
                    yield f"{rel(path)}:{lineno}", seg


def all_commands() -> list[Command]:
    scripts = console_scripts()
    out = []
    for where, seg in all_segments():
        cmd = command_of(seg, where, scripts)
        if cmd is not None:
            out.append(cmd)
    return out


def long_flags(args: tuple[str, ...]) -> list[str]:
    flags = []
    for a in args:
        a = a.strip("[]")
        if a.startswith("--") and len(a) > 2:
            flags.append(a.split("=", 1)[0])
    return flags


# ----------------------------------------------------------------------------------------------------
# Running --help


def is_script(module: str) -> bool:
    return module.endswith(".py")


def module_exists(module: str) -> bool:
    if is_script(module):
        return (ROOT / module).is_file()
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


def run_help(key: tuple[str, ...]) -> tuple[int, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        argv = [sys.executable, *key] if is_script(key[0]) else [sys.executable, "-m", *key]
        proc = subprocess.run([*argv, "--help"], capture_output=True, text=True,
                              cwd=ROOT, env=env, timeout=HELP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return -1, f"--help did not finish in {HELP_TIMEOUT_S} s"
    return proc.returncode, proc.stdout + proc.stderr


def shown(key: tuple[str, ...]) -> str:
    """How a help key reads in a message: `python -m lr_jax.convert hf2flax`, `python bench/x.py`."""
    return f"python {' '.join(key)}" if is_script(key[0]) else f"python -m {' '.join(key)}"


def subcommands(help_text: str) -> set[str]:
    """Subcommands a --help text announces: argparse's `{a,b}` choices, or `python -m <module> <word>`."""
    found: set[str] = set()
    for group in re.findall(r"\{([\w-]+(?:,[\w-]+)+)\}", help_text):
        found.update(group.split(","))
    found.update(re.findall(r"python -m [\w.]+ ([a-z][\w-]*)\b", help_text))
    return found


@pytest.fixture(scope="module")
def commands() -> list[Command]:
    cmds = all_commands()
    assert cmds, "no `python -m` commands found in the docs' bash blocks: is the parser broken?"
    return cmds


@pytest.fixture(scope="module")
def helps(commands: list[Command]) -> dict[tuple[str, ...], tuple[int, str]]:
    """--help of every distinct (module,) that exists, then of every (module, subcommand) the docs use."""
    modules = sorted({c.module for c in commands if module_exists(c.module)})
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(modules)))) as pool:
        out = dict(zip([(m,) for m in modules], pool.map(run_help, [(m,) for m in modules]), strict=True))
        subs = sorted({(c.module, c.args[0]) for c in commands
                       if (c.module,) in out and c.args and c.args[0] in subcommands(out[(c.module,)][1])})
        out.update(zip(subs, pool.map(run_help, subs), strict=True))
    return out


def help_key(cmd: Command, helps: dict[tuple[str, ...], tuple[int, str]]) -> tuple[str, ...]:
    if cmd.args and (cmd.module, cmd.args[0]) in helps:
        return (cmd.module, cmd.args[0])
    return (cmd.module,)


# ----------------------------------------------------------------------------------------------------
# The config schema (lr_jax.train overrides)


def config_schema() -> type:
    for name in CONFIG_SCHEMA_MODULES:
        if module_exists(name):
            return importlib.import_module(name).Config
    raise AssertionError(f"no training config schema in any of {CONFIG_SCHEMA_MODULES}")


def dataclass_of(tp: typing.Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):  # Optional[RopeScaling] and friends
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def config_field_problem(schema: type, dotted: str) -> str | None:
    """None if `config.a.b` names a field of the schema, else why not."""
    cls: type | None = schema
    path = "config"
    for part in dotted.split("."):
        if cls is None:
            return f"{path} has no fields (so no {part!r})"
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            return f"{path} has no field {part!r} (fields: {', '.join(sorted(names))})"
        cls = dataclass_of(hints[part])
        path += f".{part}"
    return None


# ----------------------------------------------------------------------------------------------------
# The tests


def test_readme_is_short() -> None:
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; the front page must stay <= {README_MAX_LINES}"


def test_docs_name_modules_that_exist(commands: list[Command]) -> None:
    missing = sorted({f"{c.where}: {shown((c.module,))}" for c in commands
                      if not module_exists(c.module) and c.module not in EXPECTED_AFTER_MERGE})
    assert not missing, "the docs run modules that do not exist:\n" + "\n".join(missing)


def test_help_exits_zero(helps: dict[tuple[str, ...], tuple[int, str]]) -> None:
    bad = []
    for key, (rc, text) in sorted(helps.items()):
        name = " ".join(key)
        if name in HELP_FAILS_TODAY:
            if rc == 0:
                bad.append(f"{shown(key)} --help exits 0 now: delete its entry from HELP_FAILS_TODAY")
            continue
        if rc != 0:
            tail = "\n    ".join(text.strip().splitlines()[-5:])
            bad.append(f"{shown(key)} --help exited {rc}:\n    {tail}")
    assert not bad, "\n".join(bad)


Helps = dict[tuple[str, ...], tuple[int, str]]


def test_flags_in_docs_are_in_help(commands: list[Command], helps: Helps) -> None:
    bad = []
    for c in commands:
        key = help_key(c, helps)
        if key not in helps:
            continue  # module missing: reported by test_docs_name_modules_that_exist
        rc, text = helps[key]
        for flag in long_flags(c.args):
            if c.module in CONFIG_MODULES and (flag == "--config" or flag.startswith("--config.")):
                continue  # checked against the config schema below
            if " ".join(key) in HELP_FAILS_TODAY or rc != 0:
                bad.append(f"{c.where}: {flag} passed to {shown(key)}, which has no working --help")
            elif not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text):
                bad.append(f"{c.where}: {shown(key)} has no flag {flag}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_train_overrides_are_config_fields(commands: list[Command]) -> None:
    schema = config_schema()
    seen, bad = 0, []
    for c in commands:
        if c.module not in CONFIG_MODULES:
            continue
        for flag in long_flags(c.args):
            if flag.startswith("--config."):
                seen += 1
                problem = config_field_problem(schema, flag[len("--config."):])
                if problem:
                    bad.append(f"{c.where}: {flag}: {problem}")
    assert seen, "the docs show no --config.<section>.<field> override: is the parser broken?"
    assert not bad, "\n".join(bad)


def test_repo_paths_in_commands_exist() -> None:
    bad = []
    for where, seg in all_segments():
        for tok in seg:
            for part in tok.split("=", 1)[-1:] if tok.startswith("-") else [tok]:
                part = part.split("::", 1)[0].strip("[]")
                if REPO_PATH.match(part) and not (ROOT / part).exists():
                    bad.append(f"{where}: {part} does not exist")
    assert not bad, "\n".join(sorted(set(bad)))


def github_anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_anchor(m.group(1))
            n = counts.get(slug, 0)
            found.add(slug if n == 0 else f"{slug}-{n}")
            counts[slug] = n + 1
    return found


def links(path: Path) -> Iterator[tuple[int, str]]:
    in_fence = False
    for k, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        line = re.sub(r"`[^`]*`", "", line)  # code spans are not links
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            yield k, target


def test_relative_links_resolve() -> None:
    bad = []
    for path in doc_files():
        for lineno, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            try:
                dest_rel = dest.relative_to(ROOT).as_posix()
            except ValueError:
                dest_rel = str(dest)
            if not dest.exists():
                if dest_rel not in EXPECTED_AFTER_MERGE:
                    bad.append(f"{rel(path)}:{lineno}: link to {target}: {dest_rel} does not exist")
                continue
            if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{rel(path)}:{lineno}: link to {target}: no heading #{anchor} in {dest_rel}")
    assert not bad, "\n".join(bad)
