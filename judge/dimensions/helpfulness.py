"""Helpfulness: the judge sees the query and the response (not the context), reasons, then scores 0-10."""

from __future__ import annotations

from judge.client import JudgeClient
from judge.dimensions.common import single_score
from judge.schema import DimensionTrace


async def score(client: JudgeClient, query: str, response: str, lang: str) -> DimensionTrace:
    return await single_score(client, "helpfulness", lang, {"query": query, "response": response})
