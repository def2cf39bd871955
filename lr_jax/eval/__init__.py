"""Benchmark evaluation (LongBench, LongBench-Chat): predictions, rule-based metrics, report tables.

Imports nothing here on purpose: `benchmarks`, `metrics` and `report` are pure Python (the judge uses them);
only `predict` pulls in JAX.
"""
