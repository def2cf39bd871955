"""Notebook API for judge traces: load scored rows into pandas, render one trace as HTML, plot distributions.

    from judge import traces
    df = traces.load_scored("runs/scored")           # DIR/scored.jsonl or the file; local or gs://
    traces.plot_distributions(df)                    # histograms per dimension + reward
    traces.show_trace(df.loc[df.reward.idxmax()])    # the best response's trace, rendered inline
    traces.plot_pair_gaps(df)                        # chosen vs rejected reward per prompt

Everything is synchronous (no event loop), so it works unchanged in Jupyter. All text from the judge or the
policy is HTML-escaped before it is shown. Figures are ``matplotlib.figure.Figure`` objects that touch no
global pyplot state; Jupyter displays them inline after ``%matplotlib inline``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

from judge.pairs import Candidate, select_pair
from judge.schema import DIMENSIONS, SCORED_FILE, USAGE_FILE, JudgeInputError, scored_file
from lr_jax.io import jsonl

SCORE_COLUMNS: tuple[str, ...] = (*DIMENSIONS, "reward")
SUPPORT_COLOURS: dict[str | None, str] = {
    "full": "#c9f2c9",  # green: fully supported by the retrieved evidence
    "partial": "#fff1b8",  # yellow
    "none": "#f7c6c6",  # red: not supported
    None: "#e2e2e2",  # grey: the judge's verdict could not be parsed
}

__all__ = [
    "SUPPORT_COLOURS",
    "TraceView",
    "TracesInputError",
    "load_scored",
    "pair_table",
    "plot_distributions",
    "plot_pair_gaps",
    "render_trace",
    "show_trace",
]


class TracesInputError(JudgeInputError):
    """A scored file that cannot be read; the message names file, line and field."""


# ---------------------------------------------------------------------------------------------------- loading


def _num(v: Any) -> float:
    if v is None or isinstance(v, bool) or not isinstance(v, int | float):
        return math.nan
    return float(v)


def load_usage(scored: str) -> dict[str, dict[str, Any]]:
    """The last ``usage.jsonl`` line per id beside the scored file ``scored`` ({} when there is none, e.g.
    rows written before issue 14): calls, prompt, ``cached_tokens`` and completion tokens per row and per
    dimension. They are not in ``scored.jsonl`` because the prompt-cached counts depend on timing and
    executor, and the rows must be the same bytes whatever the executor."""
    from lr_jax.io import storage

    if not scored.endswith("/" + SCORED_FILE) and scored != SCORED_FILE:
        return {}  # a scored file under another name: no sidecar to pair it with
    usage = scored[: -len(SCORED_FILE)] + USAGE_FILE
    if not storage.exists(usage):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for _, u in jsonl.read_jsonl(usage, error=TracesInputError, torn_tail="skip"):
        if isinstance(u.get("id"), str | int) and not isinstance(u.get("id"), bool):
            out[str(u["id"])] = u
    return out


def _with_cached(trace: dict[str, Any], usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of ``trace`` whose per-dimension ``usage`` (and completeness' ``shared_usage``) also holds
    ``cached_tokens`` from the row's ``usage.jsonl`` line."""
    if not usage or not isinstance(usage.get("by_dimension"), Mapping):
        return trace
    out = dict(trace)
    for d, u in usage["by_dimension"].items():
        t = trace.get(d)
        if isinstance(t, Mapping) and isinstance(t.get("usage"), Mapping) and isinstance(u, Mapping):
            out[d] = {**t, "usage": {**t["usage"], "cached_tokens": u.get("cached_tokens")}}
            shared = usage.get("completeness_extraction")
            has_shared = isinstance(t.get("shared_usage"), Mapping) and isinstance(shared, Mapping)
            if d == "completeness" and has_shared:
                out[d]["shared_usage"] = {**t["shared_usage"], "cached_tokens": shared.get("cached_tokens")}
    return out


def load_scored(path: str) -> Any:
    """One row per response: ``id, prompt_id, status, <4 dimensions>, reward`` (NaN = failed/absent),
    ``judge_model, prompt_version, query, response, response_chars``, the judge's ``calls, prompt_tokens,
    cached_tokens, completion_tokens`` for the row (summed over its dimensions; ``cached_tokens``, the
    prompt tokens the server read from its prompt cache, comes from ``usage.jsonl`` beside the scored file:
    NaN without one) and the whole ``trace`` dict (objects; with ``usage.jsonl``, each dimension's
    ``usage`` gains ``cached_tokens``).

    ``path`` is a directory holding ``scored.jsonl`` or the file itself, local or gs://. When an id has
    several lines (``judge.score --retry-failed`` appends a new row after a failed one) the last one is used,
    at the place of the first.
    """
    import pandas as pd

    file = scored_file(path)
    usage = load_usage(file)
    rows: dict[str, dict[str, Any]] = {}
    for n, r in jsonl.read_jsonl(file, error=TracesInputError):
        for k in ("id", "prompt_id"):
            if not isinstance(r.get(k), str | int) or isinstance(r.get(k), bool):
                raise TracesInputError(f"{file}: line {n}: field {k!r} must be a string or int")
        scores = r.get("scores")
        if not isinstance(scores, dict):
            raise TracesInputError(f"{file}: line {n}: field 'scores' must be an object")
        trace = r.get("trace") if isinstance(r.get("trace"), dict) else {}
        response = r.get("response") if isinstance(r.get("response"), str) else ""
        u = usage.get(str(r["id"]))
        trace = _with_cached(trace, u)
        dims = [t["usage"] for d in DIMENSIONS if isinstance(t := trace.get(d), dict)
                and isinstance(t.get("usage"), dict)]
        rows[str(r["id"])] = {
            "id": str(r["id"]),
            "prompt_id": str(r["prompt_id"]),
            "status": r.get("status"),
            **{c: _num(scores.get(c)) for c in SCORE_COLUMNS},
            "judge_model": trace.get("judge_model"),
            "prompt_version": trace.get("prompt_version"),
            "query": r.get("query"),
            "response": response,
            "response_chars": len(response),
            **{k: sum(_num(x.get(k)) for x in dims) if dims else math.nan for k in TOKEN_COLUMNS},
            "cached_tokens": _num(u.get("cached_tokens")) if u else math.nan,
            "trace": trace,
        }
    cols = [
        "id",
        "prompt_id",
        "status",
        *SCORE_COLUMNS,
        "judge_model",
        "prompt_version",
        "query",
        "response",
        "response_chars",
        *TOKEN_COLUMNS,
        "cached_tokens",
        "trace",
    ]
    return pd.DataFrame(list(rows.values()), columns=cols)


TOKEN_COLUMNS: tuple[str, ...] = ("calls", "prompt_tokens", "completion_tokens")


# ---------------------------------------------------------------------------------------------------- HTML


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _fmt(v: Any) -> str:
    f = _num(v)
    return "—" if math.isnan(f) else f"{f:.2f}"


def _as_dict(row_or_dict: Any) -> dict[str, Any]:
    if isinstance(row_or_dict, Mapping):
        return dict(row_or_dict)
    if hasattr(row_or_dict, "to_dict"):  # a pandas Series from load_scored
        return dict(row_or_dict.to_dict())
    raise TypeError(
        f"render_trace takes a scored-row dict or a DataFrame row, got {type(row_or_dict).__name__}"
    )


def _dimension_html(dim: str, t: Mapping[str, Any]) -> str:
    status = t.get("status")
    parts = [
        f'<div class="lr-dim" data-dim="{_e(dim)}">',
        f"<h4>{_e(dim)}: {_fmt(t.get('score'))} <small>({_e(status)})</small></h4>",
    ]
    if t.get("error"):
        parts.append(f'<p class="lr-error" style="color:#a00">error: {_e(t["error"])}</p>')
    if t.get("reasoning"):
        parts.append(f'<p class="lr-reasoning" style="white-space:pre-wrap">{_e(t["reasoning"])}</p>')
    usage = t.get("usage")
    if isinstance(usage, Mapping):
        cached = usage.get("cached_tokens")
        parts.append(
            f"<p><small>judge calls {_e(usage.get('calls'))}, "
            f"prompt tokens {_e(usage.get('prompt_tokens'))}"
            + (f" (prompt-cached {_e(cached)})" if cached is not None else "")
            + f", completion tokens {_e(usage.get('completion_tokens'))}</small></p>"
        )
    statements = t.get("statements")
    if isinstance(statements, list) and statements:
        parts.append('<ol class="lr-statements">')
        for s in statements:
            if not isinstance(s, Mapping):
                continue
            support = s.get("support") if s.get("support") in SUPPORT_COLOURS else None
            colour = SUPPORT_COLOURS[support]
            parts.append(
                f'<li data-support="{_e(support or "unparsed")}" style="background:{colour};padding:2px 4px;'
                f'margin:2px 0"><b>[{_e(support or "unparsed")}]</b> {_e(s.get("text"))}'
            )
            if s.get("reasoning"):
                parts.append(f'<div style="font-size:90%"><i>{_e(s["reasoning"])}</i></div>')
            evidence = s.get("evidence")
            if isinstance(evidence, list) and evidence:
                parts.append('<ul class="lr-evidence" style="font-size:85%">')
                for ev in evidence:
                    if isinstance(ev, Mapping):
                        parts.append(f"<li>chunk {_e(ev.get('chunk_index'))}: {_e(ev.get('text'))}</li>")
                parts.append("</ul>")
            parts.append("</li>")
        parts.append("</ol>")
    chunks = t.get("chunks")
    if isinstance(chunks, list) and chunks:
        parts.append(
            '<table class="lr-chunks"><tr><th>chunk</th><th>position</th><th>extracted info</th></tr>'
        )
        for c in chunks:
            if isinstance(c, Mapping):
                info = c.get("info")
                shown = _e(info) if info is not None else "<i>(nothing relevant)</i>"
                parts.append(
                    f"<tr><td>{_e(c.get('index'))}</td><td>{_e(c.get('position'))}</td><td>{shown}</td></tr>"
                )
        parts.append("</table>")
    if t.get("raw"):
        parts.append(f"<details><summary>raw judge output</summary><pre>{_e(t['raw'])}</pre></details>")
    parts.append("</div>")
    return "".join(parts)


def render_trace(row_or_dict: Any) -> str:
    """HTML for one scored response: header, response, score table, each dimension's reasoning and score,
    faithfulness statements coloured by support level with their evidence, completeness per-chunk info.

    Accepts a raw scored row (dict) or a row of :func:`load_scored`'s DataFrame. All text is HTML-escaped.
    """
    d = _as_dict(row_or_dict)
    trace = d.get("trace") if isinstance(d.get("trace"), Mapping) else {}
    scores = d.get("scores") if isinstance(d.get("scores"), Mapping) else {c: d.get(c) for c in SCORE_COLUMNS}
    head = (
        f"<h3>response {_e(d.get('id'))} · prompt {_e(d.get('prompt_id'))} · "
        f"reward {_fmt(scores.get('reward'))}"
        f" · {_e(d.get('status'))}</h3>"
        f"<p><small>judge {_e(trace.get('judge_model'))} @ {_e(trace.get('base_url_host'))}, prompts "
        f"{_e(trace.get('prompt_version'))}</small></p>"
    )
    query = f"<p><b>query:</b> {_e(d.get('query'))}</p>" if d.get("query") else ""
    response = (
        f'<details open><summary>response</summary><pre style="white-space:pre-wrap">{_e(d.get("response"))}'
        "</pre></details>"
    )
    table = "<table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in SCORE_COLUMNS) + "</tr><tr>"
    table += "".join(f"<td>{_fmt(scores.get(c))}</td>" for c in SCORE_COLUMNS) + "</tr></table>"
    dims = "".join(
        _dimension_html(dim, trace[dim]) for dim in DIMENSIONS if isinstance(trace.get(dim), Mapping)
    )
    return f'<div class="lr-trace">{head}{query}{response}{table}{dims}</div>'


class TraceView:
    """Wraps one row so Jupyter renders it as HTML (``_repr_html_``); ``str()`` gives the HTML too."""

    def __init__(self, row_or_dict: Any) -> None:
        self.html = render_trace(row_or_dict)

    def _repr_html_(self) -> str:
        return self.html

    def __str__(self) -> str:
        return self.html


def show_trace(row_or_dict: Any) -> TraceView:
    """The notebook helper: the last expression of a cell, ``show_trace(row)``, renders the trace inline."""
    return TraceView(row_or_dict)


# ---------------------------------------------------------------------------------------------------- plots


def plot_distributions(df: Any) -> Any:
    """Histogram (0–10, unit bins) per dimension and for the reward; failures (NaN) are counted in titles.

    Returns a ``matplotlib.figure.Figure`` with 5 axes.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(SCORE_COLUMNS), 3.0), layout="constrained")
    axes = fig.subplots(1, len(SCORE_COLUMNS), sharey=True)
    bins = [i - 0.5 for i in range(12)]
    for ax, col in zip(axes, SCORE_COLUMNS, strict=True):
        vals = df[col].astype(float)
        ok = vals.dropna()
        ax.hist(ok, bins=bins, color="#4c72b0" if col != "reward" else "#dd8452")
        ax.set_title(f"{col}\nn={len(ok)}, failed={int(vals.isna().sum())}, mean={ok.mean():.2f}", fontsize=9)
        ax.set_xlim(-0.5, 10.5)
        ax.set_xlabel("score")
    axes[0].set_ylabel("responses")
    return fig


def pair_table(df: Any, *, min_responses: int = 2) -> Any:
    """Per prompt the pair ``judge.pairs`` would build (same selection and tie-break): ``prompt_id, n_scored,
    chosen_id, rejected_id, chosen_reward, rejected_reward, gap``; prompts with fewer scored responses are
    left out."""
    import pandas as pd

    ok = df[(df["status"] == "scored") & df["reward"].notna()]
    out = []
    for pid, g in ok.groupby("prompt_id", sort=True):
        cands = [
            Candidate(id=r.id, response="", reward=float(r.reward), scores={})
            for r in g.itertuples(index=False)
        ]
        if len(cands) < min_responses:
            continue
        sel = select_pair(cands)
        if sel is None:
            continue
        c, rj = sel
        out.append(
            {
                "prompt_id": pid,
                "n_scored": len(cands),
                "chosen_id": c.id,
                "rejected_id": rj.id,
                "chosen_reward": c.reward,
                "rejected_reward": rj.reward,
                "gap": c.reward - rj.reward,
            }
        )
    cols = ["prompt_id", "n_scored", "chosen_id", "rejected_id", "chosen_reward", "rejected_reward", "gap"]
    return pd.DataFrame(out, columns=cols)


def plot_pair_gaps(df: Any, *, min_responses: int = 2) -> Any:
    """Left: chosen vs. rejected reward per prompt (points above the diagonal = a usable preference). Right: a
    histogram of the gaps. Returns a ``matplotlib.figure.Figure``."""
    from matplotlib.figure import Figure

    pt = pair_table(df, min_responses=min_responses)
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot([0, 10], [0, 10], color="#999", lw=1, ls="--")
    ax1.scatter(pt["rejected_reward"], pt["chosen_reward"], s=18, color="#4c72b0")
    ax1.set_xlim(-0.2, 10.2)
    ax1.set_ylim(-0.2, 10.2)
    ax1.set_xlabel("rejected (worst) reward")
    ax1.set_ylabel("chosen (best) reward")
    ax1.set_title(f"{len(pt)} prompts with >= {min_responses} scored responses", fontsize=9)
    ax2.hist(pt["gap"], bins=20, color="#55a868")
    ax2.set_xlabel("reward gap (chosen - rejected)")
    ax2.set_ylabel("prompts")
    ax2.set_title(f"median gap {pt['gap'].median():.2f}" if len(pt) else "no pairs", fontsize=9)
    return fig
