"""Chat-template tokenization: prompt + response ids == the template applied to the whole conversation."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from lr_jax.data import demo
from lr_jax.data.errors import DataError
from lr_jax.data.tokenization import ChatTokenizer, prompt_text


@pytest.fixture(scope="module", params=["wordlevel", "bpe"])
def tok_dir(request, tmp_path_factory):
    return demo.build_tiny_tokenizer(str(tmp_path_factory.mktemp(request.param)), kind=request.param)


def _hf_ids(hf, messages, **kw):
    return list(hf.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))


def test_prompt_plus_response_equals_full_template(tok_dir):
    ct = ChatTokenizer.from_dir(tok_dir)
    hf = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)  # independent reference
    for pair in demo.make_synthetic_pairs(4, seed=3, context_tokens=60):
        user = {"role": "user", "content": prompt_text(pair["context"], pair["query"])}
        prompt = ct.encode_prompt(pair["context"], pair["query"])
        assert prompt.ids.tolist() == _hf_ids(hf, [user], add_generation_prompt=True)
        for resp in (pair["chosen"], pair["rejected"]):
            r = ct.encode_response(pair["context"], pair["query"], resp)
            full = _hf_ids(hf, [user, {"role": "assistant", "content": resp}])
            assert prompt.ids.tolist() + r.tolist() == full
            assert r[-1] == hf.eos_token_id  # the last content token learns to predict EOS
        # The context span covers the context and nothing of the template or the query.
        s, e = prompt.context_span
        assert 0 < s < e < len(prompt.ids)
        inside, context = ct.decode(prompt.ids[s:e]).replace(" ", ""), pair["context"].replace(" ", "")
        assert inside in context and len(inside) > 0.9 * len(context)
        assert pair["query"].replace(" ", "") in ct.decode(prompt.ids[e:]).replace(" ", "")
        assert hf.unk_token_id not in prompt.ids  # the demo vocabulary covers every generated word


def test_non_prefix_stable_template_falls_back_to_response_plus_eos(tmp_path):
    d = demo.build_tiny_tokenizer(str(tmp_path / "t"))
    hf = AutoTokenizer.from_pretrained(d, local_files_only=True)
    # Generation prompt "<|assistant|> Answer:" is not a prefix of the rendered conversation.
    hf.chat_template = demo.CHAT_TEMPLATE.replace(
        "{% if add_generation_prompt %}<|assistant|>", "{% if add_generation_prompt %}<|assistant|> Answer:")
    ct = ChatTokenizer(hf)
    answer = "Ada Kerr was born in 1850."
    r = ct.encode_response(answer, "In which year was Ada Kerr born?", answer)
    expected = hf(answer, add_special_tokens=False)["input_ids"] + [hf.eos_token_id]
    assert r.tolist() == expected


def test_empty_context_has_no_truncatable_span(tok_dir):
    ct = ChatTokenizer.from_dir(tok_dir)
    p = ct.encode_prompt("", "What is the capital of Velesia?")
    assert p.context_span == (0, 0) and len(p.ids) > 3
    assert isinstance(p.ids, np.ndarray) and p.ids.dtype == np.int32


def test_bad_tokenizer_dirs_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ChatTokenizer.from_dir(str(tmp_path / "missing"))
    d = demo.build_tiny_tokenizer(str(tmp_path / "t"))
    hf = AutoTokenizer.from_pretrained(d, local_files_only=True)
    hf.chat_template = None
    with pytest.raises(DataError, match="chat_template"):
        ChatTokenizer(hf, name=d)
