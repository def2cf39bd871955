"""House rules of the judge package: one owner per shared constant, one error base, and imports limited to
`lr_jax.io` and `lr_jax.errors` (never JAX)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT

JUDGE = ROOT / "judge"


def _module_constants(path: Path) -> set[str]:
    """Names assigned at module level in UPPER_CASE (definitions, not imports)."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        out |= {t.id for t in targets if isinstance(t, ast.Name) and t.id.isupper()}
    return out


def test_dimensions_has_one_owner() -> None:
    from judge import pairs, schema, traces
    from lr_jax.io import records

    assert schema.DIMENSIONS is records.DIMENSIONS
    assert traces.DIMENSIONS is records.DIMENSIONS and pairs.DIMENSIONS is records.DIMENSIONS
    for path in JUDGE.rglob("*.py"):
        assert "DIMENSIONS" not in _module_constants(path), f"{path} defines DIMENSIONS again"


def test_no_public_constant_is_defined_twice_in_judge() -> None:
    seen: dict[str, Path] = {}
    for path in sorted(JUDGE.rglob("*.py")):
        for name in _module_constants(path):
            if name.startswith("_") or name in ("T", "D"):  # private names and TypeVars are local
                continue
            assert name not in seen, f"{name} is defined in {seen[name]} and {path}"
            seen[name] = path


def test_input_errors_share_one_base() -> None:
    from judge import pairs, traces
    from judge.client import JudgeFatalError
    from judge.schema import JudgeInputError
    from lr_jax.errors import LrJaxError
    from lr_jax.io import jsonl, records, storage

    for cls in (JudgeInputError, pairs.PairsInputError, traces.TracesInputError, JudgeFatalError,
                records.RecordError, jsonl.JsonlError, storage.StorageError):
        assert issubclass(cls, LrJaxError), cls
    assert issubclass(JudgeInputError, ValueError)  # callers that caught ValueError still do


def test_judge_imports_only_lr_jax_io_and_errors() -> None:
    """Statically (every import statement in judge/) and at run time (after importing every module)."""
    allowed = ("lr_jax.io", "lr_jax.errors")
    for path in JUDGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for n in names:
                if n == "lr_jax" or n.startswith("lr_jax."):
                    assert n.startswith(allowed), f"{path}: imports {n}"
                assert not n.startswith(("jax", "flax", "optax")), f"{path}: imports {n}"
    mods = sorted("judge." + ".".join(p.relative_to(JUDGE).with_suffix("").parts)
                  for p in JUDGE.rglob("*.py") if p.name != "__init__.py")
    code = (
        f"import importlib, sys\nfor m in {mods!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')\n"
        "             or (m.startswith('lr_jax.') and not m.startswith(('lr_jax.io', 'lr_jax.errors'))))\n"
        "assert not bad, bad\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
