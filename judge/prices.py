"""What the judge's calls cost: a price table and the summary's dollar split.

Prices are USD per 1M tokens per model — ``input`` (uncached prompt tokens), ``cached_input`` (prompt tokens
the provider read from its prompt cache), ``output`` — and ``batch_discount``, the factor every price is
multiplied by for a Batch-API call. The defaults, each dated (``as_of``), live in ``judge/prices.json``, the
one source of them (with where each was checked: ``verified`` only when read on the provider's own page);
``judge.score --prices FILE`` reads another table of the same shape (copy and edit that
file), and ``--price-as MODEL`` prices the run as a model of the table (a self-hosted judge, or the fake
server in benchmarks). A model that is in neither is an **unknown price**: ``cost_usd`` and ``saved_usd``
are ``null`` and ``price.note`` says how to add it, never a made-up number.

The split in ``summary.json`` (this run's calls only):

- ``cost_usd``: paid — uncached prompt tokens at ``input``, cached ones at ``cached_input``, completion
  tokens at ``output``, times ``batch_discount`` for calls answered by a batch executor;
- ``saved_usd.response_cache``: answers served by our response cache (or shared in flight), at the price
  this run would have paid for them (their recorded tokens, none counted as prompt-cached);
- ``saved_usd.prompt_cache``: cached prompt tokens × (``input`` − ``cached_input``), batch factor applied;
- ``saved_usd.batch``: what the batched calls would have cost online minus what they cost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from judge.schema import JudgeInputError
from lr_jax.options import option, validate

DEFAULT_PRICES = Path(__file__).with_name("prices.json")
PRICE_FIELDS = ("input", "cached_input", "output", "batch_discount")


@dataclass
class PriceOptions:
    """Where prices come from (flags of ``judge.score``); defaults and help live here only."""

    prices: str | None = option(None, help="price table JSON (default: judge/prices.json, dated defaults)")
    price_as: str | None = option(None, help="price the calls as this model of the table (default: --model)")

    def __post_init__(self) -> None:
        validate(self, JudgeInputError)


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens, and the batch factor."""

    input: float
    cached_input: float
    output: float
    batch_discount: float
    as_of: str | None = None
    verified: bool | None = None  # read on the provider's own page (True) or only third-party copies (False)
    checked: str | None = None  # when it was last compared with a published price

    def online(self, prompt: float, cached: float, completion: float) -> float:
        """USD of calls with these token counts, answered online."""
        return ((prompt - cached) * self.input + cached * self.cached_input + completion * self.output) / 1e6


def load_table(path: str | Path | None = None) -> dict[str, Price]:
    """Model -> `Price` from a price file (default: ``judge/prices.json``); bad files are one-line errors."""
    p = Path(path) if path else DEFAULT_PRICES
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise JudgeInputError(f"--prices {p}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise JudgeInputError(f"--prices {p}: not JSON ({e.msg}, line {e.lineno})") from None
    models = obj.get("models") if isinstance(obj, dict) else None
    if not isinstance(models, dict):
        raise JudgeInputError(f"--prices {p}: needs an object {{'models': {{name: prices}}}}")
    out: dict[str, Price] = {}
    for name, v in models.items():
        if not isinstance(v, dict):
            raise JudgeInputError(f"--prices {p}: models.{name} must be an object")
        for k in PRICE_FIELDS:
            x = v.get(k)
            if isinstance(x, bool) or not isinstance(x, int | float) or x < 0:
                raise JudgeInputError(f"--prices {p}: models.{name}.{k} must be a number >= 0, got {x!r}")
        verified = v.get("verified") if isinstance(v.get("verified"), bool) else None
        out[name] = Price(
            *(float(v[k]) for k in PRICE_FIELDS),
            as_of=v.get("as_of"),
            verified=verified,
            checked=v.get("checked"),
        )
    return out


def resolve(opts: PriceOptions, model: str) -> tuple[str, Price | None, dict[str, Any]]:
    """(priced-as model, its price or None, the ``price`` block of the summary)."""
    table = load_table(opts.prices)
    name = opts.price_as or model
    price = table.get(name)
    src = str(opts.prices or DEFAULT_PRICES)
    info: dict[str, Any] = {"model": name, "table": src, "known": price is not None}
    if price is None:
        info["note"] = (
            f"unknown price for model {name!r}: add it to a copy of {DEFAULT_PRICES.name} and pass --prices, "
            "or pass --price-as a model of the table"
        )
    else:
        info.update(
            {k: getattr(price, k) for k in PRICE_FIELDS},
            as_of=price.as_of,
            verified=price.verified,
            checked=price.checked,
            unit="USD per 1M tokens",
        )
    return name, price, info


def _tot(d: dict[str, Any]) -> tuple[int, int, int]:
    """(calls, prompt, completion) summed over a per-dimension dict of `judge.client.Usage`."""
    return (
        sum(u.calls for u in d.values()),
        sum(u.prompt_tokens for u in d.values()),
        sum(u.completion_tokens for u in d.values()),
    )


def money(stats: Any, price: Price | None, batched_run: bool) -> tuple[float | None, dict[str, Any]]:
    """(``cost_usd``, ``saved_usd``) of a `judge.client.ClientStats` (module docstring)."""
    if price is None:
        return None, {"response_cache": None, "prompt_cache": None, "batch": None}
    _, pt, ct = _tot(stats.paid)
    cached = sum(stats.cached_tokens.values())
    _, bpt, bct = _tot(stats.batched)
    bcached = sum(stats.batched_cached_tokens.values())
    online_part = price.online(pt - bpt, cached - bcached, ct - bct)
    batch_online = price.online(bpt, bcached, bct)
    paid = online_part + batch_online * price.batch_discount
    _, hpt, hct = _tot(stats.hits)
    factor = price.batch_discount if batched_run else 1.0
    saved = {
        "response_cache": price.online(hpt, 0, hct) * factor,
        "prompt_cache": ((cached - bcached) + bcached * price.batch_discount)
        * (price.input - price.cached_input)
        / 1e6,
        "batch": batch_online * (1 - price.batch_discount),
    }
    return round(paid, 9), {k: round(v, 9) for k, v in saved.items()}


def cost_of(price: Price | None, prompt: float, completion: float, batched: bool) -> float | None:
    """USD of calls with these token counts (no prompt caching assumed): `judge.score --dry-run`."""
    if price is None:
        return None
    return round(price.online(prompt, 0, completion) * (price.batch_discount if batched else 1.0), 9)
