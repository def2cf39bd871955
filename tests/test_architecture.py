"""The rules of the house, read from the code: import graph, layering, and who may name an attention backend.

The import graph is built statically (every `import` / `from ... import` anywhere in a module, including the
lazy ones inside functions): a lazy import still ties the two modules together, so it counts.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from lr_jax.model.attention import BACKENDS
from tests.helpers.paths import ROOT

PACKAGES = ("lr_jax", "judge")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks: annotations only, never run."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports at run time: `from a import b` is `a.b` when that is a module,
    else `a`; `import a.b.c` is the deepest project module of the dotted name."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            subs = [f"{base}.{a.name}" for a in node.names]
            targets = [t for t in subs if t in known] + ([base] if any(t not in known for t in subs) else [])
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        for w in graph[v]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def _parents(name: str) -> set[str]:
    """Importing `a.b.c` runs `a/__init__` and `a/b/__init__` too."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_the_import_walker_sees_lazy_imports_and_skips_type_only_ones():
    graph = _graph()
    assert "lr_jax.model.attention.splash" in graph["lr_jax.model.attention.ring_kernels"]  # in a function
    assert "lr_jax.model.config" not in graph["lr_jax.model.attention.registry"]  # under TYPE_CHECKING


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_in_lr_jax_and_judge():
    assert _cycles(_graph()) == []


# What judge may import from lr_jax: storage and records, the error base, the option declarations, and the
# pure-Python benchmark definitions, scorers and reference-answer rewards of lr_jax.eval (judge.eval scores
# what lr_jax.eval predicts; judge.pairs ranks by the reference reward). None of them JAX.
JUDGE_MAY_IMPORT = ("lr_jax.errors", "lr_jax.options", "lr_jax.io", "lr_jax.eval.benchmarks",
                    "lr_jax.eval.metrics", "lr_jax.eval.reference", "lr_jax.eval.report",
                    "lr_jax.openai_client")  # the OpenAI client machinery the engine sampler shares


def test_judge_imports_only_lr_jax_io_and_errors():
    graph = _graph()
    inside = tuple(f"{p}." for p in JUDGE_MAY_IMPORT)  # and their packages' modules
    allowed = {"lr_jax", "lr_jax.eval", *JUDGE_MAY_IMPORT} | {m for m in graph if m.startswith(inside)}
    for name in [m for m in graph if m.split(".")[0] == "judge"]:
        reach = _reachable(graph, name)
        reach |= {p for m in reach for p in _parents(m)}
        bad = sorted(m for m in reach if m.startswith("lr_jax") and m not in allowed)
        assert not bad, f"{name} pulls in {bad}"


def test_judge_never_imports_jax_at_run_time():
    """Import every judge module; nothing heavy and no lr_jax module outside JUDGE_MAY_IMPORT gets loaded."""
    mods = sorted(m for m in _modules() if m.split(".")[0] == "judge")
    code = (f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
            f"ok = {JUDGE_MAY_IMPORT!r}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax',"
            " 'tensorflow') or (m.startswith('lr_jax.') and not m.startswith(ok) and m != 'lr_jax.eval'))\n"
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_parallel_knows_no_model_and_what_judge_imports_knows_no_jax():
    graph = _graph()
    for name in [m for m in graph if m.startswith("lr_jax.parallel")]:
        inside = ("lr_jax.parallel", "lr_jax.errors")
        bad = sorted(m for m in _reachable(graph, name) if not m.startswith(inside))
        assert not bad, f"{name} imports {bad}"
    for name in [m for m in graph if m.startswith(JUDGE_MAY_IMPORT)]:
        tree = ast.parse(_modules()[name].read_text())
        roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        roots |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not roots & {"jax", "flax"}, name  # (records builds a tf FEATURE_SPEC lazily, for TF users)


def test_lr_jax_never_imports_judge():
    graph = _graph()
    for name in [m for m in graph if m.startswith("lr_jax")]:
        assert not [m for m in graph[name] if m.startswith("judge")], name


def test_no_attention_backend_named_outside_attention():
    """Code outside lr_jax/model/attention/ goes through the registry; a backend name in a string there is
    a branch on a backend's internals. (configs/ and bench/ choose backends as users do: not checked.)"""
    # "reference" is also a DPO word (`dpo.reference`, the reference model): the other names are unambiguous.
    names = "|".join(b for b in BACKENDS if b != "reference")
    pattern = re.compile(rf"""["']({names})["']""")
    offenders = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if "attention" in path.relative_to(ROOT).parts:
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line.split("#")[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


PUBLIC_CONSTANT = re.compile(r"[A-Z][A-Z0-9_]*")


def _private_imports(name: str, path: Path, known: set[str]) -> set[tuple[str, str, str]]:
    """(importer, project module, name) for every ``from <project module> import _name`` in `name`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        if base.split(".")[0] not in PACKAGES:
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                out.add((name, base, alias.name))
    return out


def _module_constants(path: Path) -> set[str]:
    """Public UPPER_CASE names bound by an assignment at module level (also inside top-level if / try)."""
    out: set[str] = set()
    todo = list(ast.parse(path.read_text(), filename=str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.If, ast.Try)):
            todo += [*node.body, *node.orelse, *getattr(node, "finalbody", []),
                     *(s for h in getattr(node, "handlers", []) for s in h.body)]
            continue
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for t in targets:
            for n in ast.walk(t):
                if isinstance(n, ast.Name) and PUBLIC_CONSTANT.fullmatch(n.id):
                    out.add(n.id)
    return out


def test_the_house_checkers_see_private_imports_and_constants(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("from lr_jax.model.layers import _x, y\nfrom ..a import _b\nfrom jax import _src\n"
                   "from x import __version__\nA = 1\nif True:\n    B: int = 2\n_C = 3\nlower = 4\n"
                   "def f():\n    D = 5\n")
    assert _private_imports("lr_jax.p.m", mod, set()) == {("lr_jax.p.m", "lr_jax.model.layers", "_x"),
                                                          ("lr_jax.p.m", "lr_jax.a", "_b")}
    assert _module_constants(mod) == {"A", "B"}


def test_no_module_imports_another_modules_private_names():
    mods = _modules()
    found = set().union(*(_private_imports(n, p, set(mods)) for n, p in mods.items()))
    assert not found, sorted(found)


def test_no_public_constant_is_defined_in_two_modules():
    """One owner per constant: the others import it (a re-export by import is not a definition)."""
    owners: dict[str, set[str]] = {}
    for name, path in _modules().items():
        for const in _module_constants(path):
            owners.setdefault(const, set()).add(name)
    twice = {c: sorted(mods) for c, mods in owners.items() if len(mods) > 1}
    assert not twice, twice
