"""Judge output parsing (JSON and tagged fallback), the scored-row schema, and the faithfulness arithmetic."""

import json

import pytest

from judge.dimensions.faithfulness import faithfulness_score
from judge.parsing import parse
from judge.prompts import PROMPT_VERSION, render
from judge.schema import JudgeInputError, reward_of, validate_scored_row


@pytest.mark.parametrize(
    ("kind", "text", "expect"),
    [
        ("helpfulness", '{"reasoning": "fine", "score": 7}', {"score": 7.0, "reasoning": "fine"}),
        (
            "helpfulness",
            'Sure:\n```json\n{"reasoning": "r", "score": "8.5"}\n```',
            {"score": 8.5, "reasoning": "r"},
        ),
        ("logicality", "<reasoning>ok</reasoning>\n<score>6</score>", {"score": 6.0, "reasoning": "ok"}),
        ("completeness", "Most points covered.\nScore: 9/10", {"score": 9.0}),
        (
            "fact_extract",
            '{"statements": ["A is B.", " ", "C is D."]}',
            {"statements": ["A is B.", "C is D."]},
        ),
        (
            "fact_extract",
            "<statement>A is B.</statement>\n<statement>C.</statement>",
            {"statements": ["A is B.", "C."]},
        ),
        ("fact_extract", "<statement>NONE</statement>", {"statements": []}),
        ("fact_support", '{"reasoning": "x", "support": "Partial"}', {"support": "partial"}),
        ("fact_support", "<reasoning>y</reasoning><support>none</support>", {"support": "none"}),
        ("info_extract", '{"relevant": false, "info": ""}', {"info": None}),
        ("info_extract", "<info>The budget was $3M.</info>", {"info": "The budget was $3M."}),
        ("info_extract", "<info>无</info>", {"info": None}),
    ],
)
def test_parse_ok(kind: str, text: str, expect: dict) -> None:
    p = parse(kind, text)
    assert p.ok, p.error
    for k, v in expect.items():
        assert p.value[k] == v


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("helpfulness", "It is pretty good overall."),
        ("helpfulness", '{"reasoning": "r", "score": 11}'),  # out of range is a failure, not clamped
        ("helpfulness", "<score>NaN</score>"),
        ("helpfulness", '{"reasoning": "r", "score": true}'),
        ("fact_extract", '{"statements": "A is B"}'),
        ("fact_support", "<support>mostly</support>"),
        ("info_extract", '{"relevant": tru'),  # truncated
    ],
)
def test_parse_failure_is_typed(kind: str, text: str) -> None:
    p = parse(kind, text)
    assert not p.ok and p.error and p.value == {}


def test_faithfulness_math_against_hand_computed() -> None:
    assert faithfulness_score(["full", "partial", "none", "full"]) == pytest.approx(
        10 * (1 + 0.5 + 0 + 1) / 4
    )
    assert faithfulness_score(["partial", None, "full"]) == pytest.approx(10 * 1.5 / 2)  # unjudged left out
    assert faithfulness_score([]) == 10.0  # nothing claimed
    assert faithfulness_score([None, None]) is None  # nothing judged -> failed, not 0


def test_reward_is_mean_of_succeeded_dimensions() -> None:
    assert reward_of({"helpfulness": 8, "logicality": None, "faithfulness": 5, "completeness": 2}) == 5.0
    assert reward_of(dict.fromkeys(["helpfulness", "logicality", "faithfulness", "completeness"])) is None


def test_prompts_render_in_both_languages_and_formats() -> None:
    en = render("helpfulness", "en", "json", query="Q {x}", response="R $y")
    zh = render("helpfulness", "zh", "tagged", query="问", response="答")
    assert "Q {x}" in en[1]["content"] and "R $y" in en[1]["content"] and "JSON" in en[0]["content"]
    assert "<score>" in zh[0]["content"] and "有用性" in zh[0]["content"]
    assert "Task id: helpfulness" in en[0]["content"] and PROMPT_VERSION.startswith("v2-")
    old = render("helpfulness", "en", "json", "interleaved", query="Q {x}", response="R $y")
    assert "JSON" in old[1]["content"] and "Example" not in old[0]["content"] + old[1]["content"]


VALUES = {
    "query": "Q",
    "response": "R",
    "evidence": "E",
    "statement": "S",
    "chunk": "C",
    "position": "0%-50%",
    "collected": "K",
}


@pytest.mark.parametrize("mode", ["json", "tagged"])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_static_first_prompts_cache_and_carry_examples_that_parse(lang, mode) -> None:
    from judge.parsing import OUTPUT_OF_KIND
    from judge.prompts import _examples, _tagged

    for kind in OUTPUT_OF_KIND:
        a = render(kind, lang, mode, **VALUES)
        b = render(kind, lang, mode, **{k: v + " other" for k, v in VALUES.items()})
        # static part first and byte-identical across calls; only variable blocks in the user message
        assert a[0]["content"] == b[0]["content"] and a[1]["content"] != b[1]["content"]
        assert a[1]["content"].startswith("<") and a[1]["content"].endswith(">")
        examples = _examples()[kind][lang]
        assert 3 <= len(examples) <= 4
        for ex in examples:  # every example's reply is what the judge must answer: it parses
            reply = (
                json.dumps(ex["output"], ensure_ascii=False)
                if mode == "json"
                else _tagged(OUTPUT_OF_KIND[kind], ex["output"])
            )
            assert reply in a[0]["content"]
            assert parse(kind, reply).ok, (kind, lang, reply)


def _row() -> dict:
    dim = {
        "status": "ok",
        "score": 6.0,
        "reasoning": "",
        "raw": "",
        "error": None,
        "usage": {"calls": 1, "prompt_tokens": 3, "completion_tokens": 2},
    }
    return {
        "id": "p-0",
        "prompt_id": "p",
        "query": "q",
        "response": "r",
        "sampler": {},
        "scores": {
            "helpfulness": 6.0,
            "logicality": 6.0,
            "faithfulness": 6.0,
            "completeness": 6.0,
            "reward": 6.0,
        },
        "status": "scored",
        "trace": {
            "judge_model": "m",
            "base_url_host": "h",
            "prompt_version": "v",
            "helpfulness": dict(dim),
            "logicality": dict(dim),
            "faithfulness": {**dim, "statements": []},
            "completeness": {**dim, "chunks": []},
        },
    }


def test_schema_validator_accepts_good_and_names_bad_field() -> None:
    validate_scored_row(json.loads(json.dumps(_row())))
    bad = _row()
    bad["scores"]["logicality"] = None  # trace says ok with 6.0 -> inconsistent
    with pytest.raises(JudgeInputError, match="logicality"):
        validate_scored_row(bad)
    bad = _row()
    bad["scores"]["reward"] = 0.0
    with pytest.raises(JudgeInputError, match="reward"):
        validate_scored_row(bad)
