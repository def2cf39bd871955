"""judge.traces: DataFrame loading, escaped HTML rendering of a trace, and the plots' data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from judge import traces
from lr_jax.io import storage
from tests.helpers.scored import make_scored_rows, write_jsonl, write_scored_dir


def test_load_scored_one_row_per_response(tmp_path) -> None:
    _, rows = write_scored_dir(str(tmp_path), n_prompts=3, n_responses=4, fail_every=5)
    df = traces.load_scored(str(tmp_path))
    assert len(df) == len(rows) and list(df["id"]) == [r["id"] for r in rows]
    for col in ("prompt_id", "status", *traces.SCORE_COLUMNS, "trace"):
        assert col in df.columns
    for r, (_, d) in zip(rows, df.iterrows(), strict=True):
        for c in traces.SCORE_COLUMNS:
            v = r["scores"][c]
            assert math.isnan(d[c]) if v is None else d[c] == v
    assert (df["status"] == "failed").sum() == 1 and df.loc[df["status"] == "failed", "reward"].isna().all()


def test_load_scored_from_gcs_and_bad_line(gcs_bucket, tmp_path) -> None:
    _, rows = make_scored_rows(1, 3)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    storage.write_text(f"gs://{gcs_bucket}/run/scored.jsonl", text)
    assert len(traces.load_scored(f"gs://{gcs_bucket}/run")) == 3
    write_jsonl(str(tmp_path / "scored.jsonl"), rows)
    with open(tmp_path / "scored.jsonl", "a") as f:
        f.write('{"id": "x", "prompt_id": "p", "scores": 3}\n')
    with pytest.raises(traces.TracesInputError, match=r"scored\.jsonl: line 4: field 'scores'"):
        traces.load_scored(str(tmp_path))


def test_render_trace_escapes_and_shows_everything(tmp_path) -> None:
    _, rows = make_scored_rows(1, 3, seed=2)
    row = rows[2]
    st = row["trace"]["faithfulness"]["statements"]
    st[0]["support"], st[1]["support"] = "none", None
    html_dict = traces.render_trace(row)
    write_jsonl(str(tmp_path / "scored.jsonl"), rows)
    df = traces.load_scored(str(tmp_path))
    html_series = traces.render_trace(df.iloc[2])
    for h in (html_dict, html_series):
        assert "<script>" not in h and "&lt;script&gt;alert(1)&lt;/script&gt;" in h  # the response, escaped
        assert "Statement 2.0 says &lt;x&gt; &amp; more" in h
        assert f'data-support="none" style="background:{traces.SUPPORT_COLOURS["none"]}' in h
        assert f'data-support="unparsed" style="background:{traces.SUPPORT_COLOURS[None]}' in h
        assert (
            "evidence chunk 1 for 2" in h and "first half mentions apples" in h and "(nothing relevant)" in h
        )
        assert "helpfulness reasoning for response 2 &lt;b&gt;not bold&lt;/b&gt;" in h
        for d in traces.DIMENSIONS:
            assert f"<h4>{d}: {row['scores'][d]:.2f}" in h
    assert traces.show_trace(row)._repr_html_() == html_dict
    failed = traces.render_trace(rows[1])  # p0-1: every dimension failed
    assert "error: could not parse a score" in failed and "reward —" in failed


def test_plots_show_the_data(tmp_path) -> None:
    from matplotlib.figure import Figure

    write_scored_dir(str(tmp_path), n_prompts=4, n_responses=5, seed=5, fail_every=3)
    df = traces.load_scored(str(tmp_path))
    fig = traces.plot_distributions(df)
    assert isinstance(fig, Figure) and len(fig.axes) == 5
    for ax, col in zip(fig.axes, traces.SCORE_COLUMNS, strict=True):
        heights = [p.get_height() for p in ax.patches]
        want, _ = np.histogram(df[col].dropna(), bins=np.arange(12) - 0.5)
        np.testing.assert_array_equal(heights, want)

    pt = traces.pair_table(df, min_responses=2)
    for pid, g in df[df.status == "scored"].groupby("prompt_id"):
        r = pt.set_index("prompt_id").loc[pid]
        assert r.chosen_reward == g.reward.max() and r.rejected_reward == g.reward.min()
        assert r.gap == pytest.approx(g.reward.max() - g.reward.min())
    fig = traces.plot_pair_gaps(df)
    xy = fig.axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(np.asarray(xy), pt[["rejected_reward", "chosen_reward"]].to_numpy())
    fig.savefig(str(tmp_path / "gaps.png"))  # renders headless
