"""House rules of the judge package: one owner per shared constant and one error base (what judge may
import is checked in tests/test_architecture.py)."""

from __future__ import annotations

import ast
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
