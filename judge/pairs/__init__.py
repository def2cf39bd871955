"""Best-vs-worst preference pairs from scored responses (``python -m judge.pairs``): the selection, reading
and writing in `judge.pairs.build`, the flags in `judge.pairs.cli`. The names below are re-exported for
callers that import them from ``judge.pairs``."""

from judge.pairs.build import (
    DIMENSIONS,
    PRODUCER,
    Candidate,
    PairsInputError,
    PairsOptions,
    PairStats,
    build_pairs,
    fingerprint,
    load_candidates,
    load_prompts,
    resolve_inputs,
    run,
    select_pair,
    summary,
)
from judge.pairs.cli import build_parser, main

__all__ = ["DIMENSIONS", "PRODUCER", "Candidate", "PairStats", "PairsInputError", "PairsOptions",
           "build_pairs", "build_parser", "fingerprint", "load_candidates", "load_prompts", "main",
           "resolve_inputs", "run", "select_pair", "summary"]
