"""Hostile input to `python -m lr_jax.sample` and `python -m lr_jax.convert` (issue 10).

Every case must end in exactly one ``error:`` line on stderr that names the file, tensor or option (and what
was expected), with exit status 2; no traceback, nothing silently written, and nothing already on disk
changed. Where the error needs no weights, the weight loaders are replaced by a function that fails the
test, so "checked before any work" is tested, not assumed. Models are tiny random ones built here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

import lr_jax.convert as convert
import lr_jax.sample as sample
from lr_jax.data import demo
from lr_jax.errors import LrJaxError

COMMON = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
# A path no process can create a file in, root included (chmod does not stop root).
UNWRITABLE = "/proc/self/lr_jax_out"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    """A tiny HF Llama over the demo tokenizer (`hf`), its lr_jax dir (`flax`) and a prompts file."""
    root = tmp_path_factory.mktemp("cli_errors")
    hf = root / "hf"
    demo.build_tiny_tokenizer(str(hf))
    tok = T.AutoTokenizer.from_pretrained(str(hf), local_files_only=True)
    cfg = T.LlamaConfig(**{**COMMON, "vocab_size": len(tok)}, eos_token_id=tok.eos_token_id,
                        bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    T.LlamaForCausalLM(cfg).save_pretrained(hf, safe_serialization=True)
    assert convert.main(["hf2flax", "--hf", str(hf), "--out", str(root / "flax")]) == 0
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "context": "Veloria Velesia", "query": "value ?"})
                               + "\n" for i in range(2)))
    return {"root": root, "hf": hf, "flax": root / "flax", "prompts": prompts}


@pytest.fixture
def no_weights(monkeypatch) -> None:
    """Fail the test if any weights are loaded: the error must come before."""
    def fail(*args, **kwargs):
        raise AssertionError("weights were loaded before the input error was reported")

    monkeypatch.setattr(sample, "load_model", fail)
    monkeypatch.setattr(convert, "from_hf", fail)
    monkeypatch.setattr(convert, "load_flax", fail)


def _one_error(capsys, *needles: str) -> str:
    """The single stderr line; it starts with ``error:`` and contains every needle."""
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _sample(model, prompts, out, *extra: str) -> int:
    return sample.main(["--model", str(model), "--prompts", str(prompts), "--out", str(out), "--num-samples",
                        "2", "--max-new-tokens", "4", "--max-prompt-tokens", "30", "--pad-to", "16",
                        "--no-progress", *extra])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_error_classes_are_lr_jax_errors() -> None:
    assert issubclass(convert.ConvertError, LrJaxError) and issubclass(convert.ConvertError, ValueError)
    assert issubclass(sample.SampleError, LrJaxError) and issubclass(sample.SampleError, ValueError)


# ------------------------------------------------------------------------------------------ lr_jax.sample


@pytest.mark.parametrize("flag,value", [
    ("temperature", "nan"), ("temperature", "inf"), ("temperature", "-1.0"), ("temperature", "1e-30"),
    ("top-p", "nan"), ("top-p", "0.0"), ("top-p", "1.5"), ("top-k", "-1"),
    ("max-new-tokens", "0"), ("batch-size", "0"), ("num-samples", "0"), ("max-prompt-tokens", "-5"),
    ("pad-to", "0"), ("pad-to", "-4"), ("seed", "-1"), ("seed", str(2**32)),
])
def test_sample_numeric_option_out_of_range_fails_before_reading_anything(
        flag: str, value: str, tmp_path, capsys) -> None:
    # Neither model nor prompts exist: an error about them would mean the option was not checked first.
    out = tmp_path / "samples.jsonl"
    out.write_text('{"id": "a-0"}\n')
    assert _sample(tmp_path / "no_model", tmp_path / "no_prompts.jsonl", out, f"--{flag}={value}") == 2
    _one_error(capsys, f"--{flag} {value}:")
    assert out.read_text() == '{"id": "a-0"}\n'


def test_sample_temperature_nan_never_writes_invalid_json(dirs, tmp_path, capsys, no_weights) -> None:
    out = tmp_path / "s.jsonl"
    assert _sample(dirs["flax"], dirs["prompts"], out, "--temperature", "nan") == 2
    _one_error(capsys, "--temperature nan")
    assert not out.exists()


def _unwritable_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


@pytest.mark.parametrize("case", ["dir", "under_file", "proc", "readonly_dir", "is_prompts", "gcs"])
def test_sample_bad_out_path_fails_before_loading(
        case: str, dirs, tmp_path, capsys, no_weights, monkeypatch) -> None:
    if case == "readonly_dir" and os.geteuid() == 0:
        pytest.skip("root ignores directory permissions (the 'proc' case covers root)")
    (tmp_path / "a_file").write_text("keep")
    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(dirs["prompts"], prompts)
    out = {"dir": tmp_path, "under_file": tmp_path / "a_file" / "s.jsonl", "proc": Path(UNWRITABLE),
           "readonly_dir": _unwritable_dir(tmp_path) / "s.jsonl", "is_prompts": prompts,
           "gcs": "gs://bucket/s.jsonl"}[case]
    before = prompts.read_bytes()
    monkeypatch.chdir(tmp_path)  # before, a gs:// --out became the local dir ./gs:/bucket
    assert _sample(dirs["flax"], prompts, out) == 2
    _one_error(capsys, f"--out {out}")
    assert not (tmp_path / "gs:").exists()
    assert (tmp_path / "a_file").read_text() == "keep" and prompts.read_bytes() == before


@pytest.mark.parametrize("content", [b"\x00\x01binary\xff\xfe without a newline", b"hello world",
                                     b"\xff\xfe\x00garbage\n"])
def test_sample_out_that_is_not_a_samples_file_is_left_untouched(
        content: bytes, dirs, tmp_path, capsys, no_weights) -> None:
    """Before, the resume step cut everything after the last newline first (a whole newline-free file)."""
    out = tmp_path / "not_samples.jsonl"
    out.write_bytes(content)
    assert _sample(dirs["flax"], dirs["prompts"], out) == 2
    _one_error(capsys, str(out), "not a Samples")
    assert out.read_bytes() == content


def test_sample_safetensors_given_as_out_is_not_truncated(dirs, tmp_path, capsys, no_weights) -> None:
    out = tmp_path / "model.safetensors"
    shutil.copy(dirs["hf"] / "model.safetensors", out)
    before = out.read_bytes()
    assert _sample(dirs["flax"], dirs["prompts"], out) == 2
    _one_error(capsys, f"--out {out}", "not UTF-8")
    assert out.read_bytes() == before


def test_sample_config_of_another_model_names_the_tensor(dirs, tmp_path, capsys) -> None:
    """Before: a JAX broadcasting TypeError from inside the decoder."""
    flax = _copy(dirs["flax"], tmp_path / "flax")
    _edit_json(flax / "model_config.json", lambda c: {**c, "hidden_size": 64, "head_dim": 16})
    assert _sample(flax, dirs["prompts"], tmp_path / "s.jsonl", "--mesh", "1,1,1") == 2
    _one_error(capsys, f"{flax / 'params'}: tensor embed/embedding has shape [", "expected [")
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize("case", ["missing", "is_file", "empty_dir", "no_params", "bad_model_config"])
def test_sample_bad_model_dir_is_one_line(case: str, dirs, tmp_path, capsys, no_weights) -> None:
    model = {"missing": tmp_path / "nope", "is_file": dirs["prompts"], "empty_dir": tmp_path}.get(case)
    if case == "no_params":
        model = _copy(dirs["flax"], tmp_path / "flax")
        shutil.rmtree(model / "params")
    if case == "bad_model_config":
        model = _copy(dirs["flax"], tmp_path / "flax")
        (model / "model_config.json").write_text("[1, 2]")
    assert _sample(model, dirs["prompts"], tmp_path / "s.jsonl") == 2
    want = {"missing": "does not exist", "is_file": "not a directory",
            "empty_dir": "neither model_config.json", "no_params": "no params/ directory",
            "bad_model_config": "model_config.json: expected a JSON object"}
    _one_error(capsys, str(model), want[case])
    assert not (tmp_path / "s.jsonl").exists()


def test_sample_truncated_hf_safetensors_names_file_and_tensor(dirs, tmp_path, capsys) -> None:
    hf = _copy(dirs["hf"], tmp_path / "hf")
    st = hf / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    assert _sample(hf, dirs["prompts"], tmp_path / "s.jsonl") == 2
    _one_error(capsys, f"{st}: truncated: tensor model.", "expected a file of")


@pytest.mark.parametrize("case", ["tokenizer_without_files", "tokenizer_is_file", "mesh",
                                  "too_long_for_the_model", "generation_config_not_object"])
def test_sample_tokenizer_mesh_and_length_errors_come_before_loading(
        case: str, dirs, tmp_path, capsys, no_weights) -> None:
    model = dirs["flax"]
    if case == "generation_config_not_object":
        model = _copy(dirs["flax"], tmp_path / "flax")
        (model / "generation_config.json").write_text("[2]")
    extra = {"tokenizer_without_files": ["--tokenizer", str(tmp_path)], "mesh": ["--mesh=2,x"],
             "tokenizer_is_file": ["--tokenizer", str(dirs["prompts"])],
             "too_long_for_the_model": ["--max-new-tokens", "500"]}.get(case, [])
    assert _sample(model, dirs["prompts"], tmp_path / "s.jsonl", *extra) == 2
    want = {"tokenizer_without_files": f"{tmp_path}: no tokenizer files", "mesh": "--mesh '2,x'",
            "tokenizer_is_file": f"--tokenizer {dirs['prompts']}: not a directory",
            "too_long_for_the_model": "exceed the model's max_position_embeddings 512",
            "generation_config_not_object": f"{model / 'generation_config.json'}: expected a JSON object"}
    _one_error(capsys, want[case])


@pytest.mark.parametrize("text,want", [
    ("", "no prompts"), ("\n  \n", "no prompts"),
    ('{"id": "a", "context": "x", "query": "q"}\n{"id": "b", "context": " ", "query": ""}\n',
     ":2: fields 'context' and 'query' are both empty"),
])
def test_sample_empty_prompts_are_an_error(text: str, want: str, tmp_path, capsys) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(text)
    assert _sample(tmp_path / "no_model", prompts, tmp_path / "s.jsonl") == 2
    _one_error(capsys, str(prompts), want)


def test_sample_prompts_directory_is_one_line(tmp_path, capsys) -> None:
    assert _sample(tmp_path / "no_model", tmp_path, tmp_path / "s.jsonl") == 2
    _one_error(capsys, f"{tmp_path}: is a directory")


# ----------------------------------------------------------------------------------------- lr_jax.convert


def _hf_variant(dirs, tmp_path: Path, edit) -> Path:
    """A copy of the tiny HF dir whose model.safetensors bytes are `edit(bytes)`."""
    hf = _copy(dirs["hf"], tmp_path / "hf")
    st = hf / "model.safetensors"
    st.write_bytes(edit(st.read_bytes()))
    return hf


def _with_header(raw: bytes, change) -> bytes:
    """`raw` with its JSON header replaced by `change(header)` (the data section kept)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    change(header)
    blob = json.dumps(header).encode()
    return len(blob).to_bytes(8, "little") + blob + raw[8 + n:]


def _set(key: str, field: str, value) -> Callable[[dict], None]:
    return lambda h: h[key].__setitem__(field, value)


SAFETENSORS_CASES = {
    "truncated": (lambda raw: raw[:-1000],
                  r"truncated: tensor model\.\S+ \(F32 \[\d+(, \d+)*\]\) needs bytes"),
    "cut_in_header": (lambda raw: raw[:100], "not a safetensors file or truncated (100 bytes"),
    "empty": (lambda raw: b"", "not a safetensors file or truncated (0 bytes"),
    "garbage": (lambda raw: b"\xff" * 64, "not a safetensors file or truncated (64 bytes"),
    "header_not_object": (lambda raw: (5).to_bytes(8, "little") + b"[1,2]", "header is a JSON list"),
    "entry_without_offsets": (
        lambda raw: _with_header(raw, lambda h: h["model.norm.weight"].pop("data_offsets")),
        "tensor model.norm.weight: bad header entry"),
    "dtype_does_not_match_bytes": (
        lambda raw: _with_header(raw, _set("model.norm.weight", "dtype", "F16")),
        "tensor model.norm.weight has 128 bytes, expected 64 for dtype F16 shape [32]"),
    "unsupported_dtype": (
        lambda raw: _with_header(raw, _set("model.norm.weight", "dtype", "F8_E4M3")),
        "tensor model.norm.weight has unsupported dtype F8_E4M3"),
    "integer_weight": (
        lambda raw: _with_header(raw, _set("model.norm.weight", "dtype", "I32")),
        "tensor model.norm.weight has dtype I32, expected a floating-point dtype"),
    "missing_tensor": (
        lambda raw: _with_header(raw, lambda h: h.pop("model.norm.weight")),
        "missing tensor model.norm.weight (expected shape [32])"),
}


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_hf2flax_bad_safetensors_names_file_and_tensor(case: str, dirs, tmp_path, capsys) -> None:
    edit, want = SAFETENSORS_CASES[case]
    hf = _hf_variant(dirs, tmp_path, edit)
    out = tmp_path / "flax"
    assert convert.main(["hf2flax", "--hf", str(hf), "--out", str(out)]) == 2
    line = _one_error(capsys, f"{hf / 'model.safetensors'}: ")
    if case == "truncated":
        assert re.search(want, line), line
        assert "expected a file of" in line
    else:
        assert want in line
    assert not out.exists()


def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


@pytest.mark.parametrize("case", ["config_list", "config_field_type", "config_rope_not_object",
                                  "config_not_utf8", "index_bad_json", "index_no_weight_map",
                                  "tensor_in_two_files", "safetensors_is_dir"])
def test_hf2flax_bad_config_or_index_is_one_line(case: str, dirs, tmp_path, capsys) -> None:
    hf = _copy(dirs["hf"], tmp_path / "hf")
    if case == "config_list":
        (hf / "config.json").write_text("[1]")
        want = f"{hf / 'config.json'}: expected a JSON object, got list"
    elif case == "config_field_type":
        _edit_json(hf / "config.json", lambda c: {**c, "hidden_size": "big"})
        want = f"{hf / 'config.json'}: field 'hidden_size' must be int, got 'big'"
    elif case == "config_rope_not_object":
        _edit_json(hf / "config.json", lambda c: {**c, "rope_scaling": "x"})
        want = f"{hf / 'config.json'}: field 'rope_scaling' must be an object, got 'x'"
    elif case == "config_not_utf8":
        (hf / "config.json").write_bytes(b"\xff\xfe{}")
        want = f"{hf / 'config.json'}: invalid JSON"
    elif case == "index_bad_json":
        (hf / "model.safetensors.index.json").write_text("{")
        want = f"{hf / 'model.safetensors.index.json'}: invalid JSON"
    elif case == "index_no_weight_map":
        (hf / "model.safetensors.index.json").write_text("{}")
        want = "field 'weight_map' is missing"
    elif case == "tensor_in_two_files":
        tensors = convert.read_safetensors(hf / "model.safetensors")
        convert.write_safetensors(hf / "extra.safetensors", {"model.norm.weight": np.array(tensors[
            "model.norm.weight"])})
        want = "tensor model.norm.weight is also in"
    else:
        (hf / "model.safetensors").unlink()
        (hf / "model.safetensors").mkdir()
        want = f"{hf / 'model.safetensors'}: is a directory"
    assert convert.main(["hf2flax", "--hf", str(hf), "--out", str(tmp_path / "flax")]) == 2
    _one_error(capsys, want)


@pytest.mark.parametrize("case", ["params_missing", "params_garbage", "model_config_missing",
                                  "model_config_bad_json", "model_config_list", "model_config_other_model"])
def test_flax2hf_bad_lr_jax_dir_is_one_line_and_keeps_out(case: str, dirs, tmp_path, capsys) -> None:
    flax = _copy(dirs["flax"], tmp_path / "flax")
    if case == "params_missing":
        shutil.rmtree(flax / "params")
        want = f"{flax}: no params/ directory"
    elif case == "params_garbage":
        shutil.rmtree(flax / "params")
        (flax / "params").mkdir()
        (flax / "params" / "junk").write_text("x")
        want = f"{flax / 'params'}: cannot read the orbax checkpoint"
    elif case == "model_config_missing":
        (flax / "model_config.json").unlink()
        want = f"{flax}: no model_config.json"
    elif case == "model_config_bad_json":
        (flax / "model_config.json").write_text("{x")
        want = f"{flax / 'model_config.json'}: invalid JSON"
    elif case == "model_config_list":
        (flax / "model_config.json").write_text("[]")
        want = f"{flax / 'model_config.json'}: expected a JSON object, got list"
    else:  # a config that does not describe these weights: before, a broken checkpoint was exported
        _edit_json(flax / "model_config.json", lambda c: {**c, "hidden_size": 64, "head_dim": 16})
        want = f"{flax / 'params'}: tensor embed/embedding has shape ["
    out = tmp_path / "hf_out"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"an earlier export")
    assert convert.main(["flax2hf", "--flax", str(flax), "--out", str(out)]) == 2
    _one_error(capsys, want)
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors"]
    assert (out / "model.safetensors").read_bytes() == b"an earlier export"


@pytest.mark.parametrize("command", ["hf2flax", "flax2hf"])
@pytest.mark.parametrize("case", ["is_file", "under_file", "proc", "gcs"])
def test_convert_bad_out_fails_before_reading_weights(
        command: str, case: str, dirs, tmp_path, capsys, no_weights, monkeypatch) -> None:
    (tmp_path / "a_file").write_text("keep")
    out = {"is_file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "x",
           "proc": Path(UNWRITABLE), "gcs": "gs://bucket/ckpt"}[case]
    monkeypatch.chdir(tmp_path)  # before, a gs:// --out became the local dir ./gs:/bucket
    src = ["--hf", str(dirs["hf"])] if command == "hf2flax" else ["--flax", str(dirs["flax"])]
    assert convert.main([command, *src, "--out", str(out)]) == 2
    _one_error(capsys, f"--out {out}")
    assert (tmp_path / "a_file").read_text() == "keep" and not (tmp_path / "gs:").exists()


@pytest.mark.parametrize("case", ["shard_mb_zero", "tokenizer_from_missing", "tokenizer_from_without_files"])
def test_flax2hf_bad_options_fail_before_reading_weights(
        case: str, dirs, tmp_path, capsys, no_weights) -> None:
    extra = {"shard_mb_zero": ["--max-shard-mb", "0"],
             "tokenizer_from_missing": ["--tokenizer-from", str(tmp_path / "nope")],
             "tokenizer_from_without_files": ["--tokenizer-from", str(tmp_path)]}[case]
    want = {"shard_mb_zero": "--max-shard-mb must be >= 1, got 0",
            "tokenizer_from_missing": f"--tokenizer-from {tmp_path / 'nope'}: not a directory",
            "tokenizer_from_without_files": f"--tokenizer-from {tmp_path}: no tokenizer files"}[case]
    assert convert.main(["flax2hf", "--flax", str(dirs["flax"]), "--out", str(tmp_path / "out"), *extra]) == 2
    _one_error(capsys, want)
    assert not (tmp_path / "out").exists()


def test_flax2hf_tokenizer_from_the_out_dir_itself(dirs, tmp_path, capsys) -> None:
    """Before: SameFileError (a traceback) after the export had already replaced the weights."""
    out = _copy(dirs["hf"], tmp_path / "hf")
    tokenizer = (out / "tokenizer.json").read_bytes()
    assert convert.main(["flax2hf", "--flax", str(dirs["flax"]), "--out", str(out),
                         "--tokenizer-from", str(out)]) == 0
    assert (out / "tokenizer.json").read_bytes() == tokenizer
    assert "tokenizer files: ['tokenizer.json'" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------------
# `lr_jax.train` / `lr_jax.plan`: the config file + overrides path (`lr_jax.cli`, issue 19 cases 7 and 10)
C = f"--config={Path(__file__).resolve().parents[1] / 'configs' / 'cpu_dpo.py'}"  # the CPU demo config


def _train_main(*args: str) -> int:
    import lr_jax.train as train

    with pytest.raises(SystemExit) as e:
        train.main(["lr_jax.train", *args])
    return e.value.code


@pytest.mark.parametrize(("args", "needles"), [
    (["--config=/nope.py"], ["--config /nope.py: no such file"]),
    (["--config", "/"], ["--config /: not a readable file"]),
    ([], ["--config is required"]),
    ([C, "--config.train.lrr=3"], ["--config.train.lrr: unknown key 'lrr' in section 'train'"]),
    ([C, "--config.optim.learning_rate=3"],
     ["--config.optim.learning_rate: unknown key 'learning_rate' in section 'optim'"]),
    ([C, "--config.trian.steps=3"], ["unknown key 'trian' in the config; did you mean 'train'?"]),
    ([C, "--config.model.lora.rank=3"], ["--config.model.lora.rank: 'model.lora' is None"]),
    ([C, "--config.train.steps=abc"], ["--config.train.steps=abc", "'abc'"]),
    ([C, "--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_train_config_errors_are_one_line(capsys, args, needles):
    assert _train_main(*args) == 2
    line = _one_error(capsys, *needles)
    assert "\\'" not in line and line.count("'") % 2 == 0, line  # no escaped quotes, none lost


def test_train_config_file_that_fails_to_load_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    raise ValueError('boom')\n")
    assert _train_main(f"--config={bad}") == 2
    _one_error(capsys, f"--config {bad}: could not load it: ValueError: boom")
    bad.write_text("x = (\n")
    assert _train_main(f"--config={bad}") == 2
    _one_error(capsys, f"--config {bad}: could not load it: SyntaxError")


@pytest.mark.parametrize(("args", "needles"), [
    (["--config=/nope.py", "--topology", "v5p-8"], ["--config /nope.py: no such file"]),
    ([C], ["--topology is required"]),
    ([C, "--topology", "v5p-8", "--config.dpo.betaa=1"],
     ["--config.dpo.betaa: unknown key 'betaa' in section 'dpo'; did you mean 'beta'?"]),
    ([C, "--topology", "v5p-8", "--prompts", "-1"], ["--prompts: must be >= 0, got -1"]),
    ([C, "--topology", "v5p-8", "--max_new_tokens", "0"], ["--max_new_tokens: must be >= 1"]),
    ([C, "--topology", "v5p-8", "--seq_lens", "0"], ["--seq_lens: must be >= 1, got 0"]),
    ([C, "--topology", "v5p-8", "--job", "x"], ["argument --job: invalid choice: 'x'"]),
])
def test_plan_config_errors_are_one_line(capsys, args, needles):
    import lr_jax.plan as plan

    assert plan.main(["lr_jax.plan", *args]) == 2
    _one_error(capsys, *needles)


@pytest.mark.parametrize(("argv", "want"), [
    (["flax2hf", "--flax", "F", "--out", "O", "--max-shard-mb", "nan"],
     "python -m lr_jax.convert flax2hf: error: argument --max-shard-mb: invalid int value: 'nan'"),
    ([], "python -m lr_jax.convert: error: the following arguments are required: command"),
    (["bogus"], "python -m lr_jax.convert: error: argument command: invalid choice: 'bogus'"),
])
def test_convert_usage_errors_are_one_line(argv: list[str], want: str, capsys) -> None:
    """Before: a 2- to 5-line usage dump (plain argparse)."""
    with pytest.raises(SystemExit) as e:
        convert.main(argv)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith(want), lines


def test_hf2flax_given_a_file_says_it_is_not_a_directory(tmp_path, capsys) -> None:
    """Before: `<file>: no config.json`."""
    f = tmp_path / "afile"
    f.write_text("x")
    assert convert.main(["hf2flax", "--hf", str(f), "--out", str(tmp_path / "out")]) == 2
    _one_error(capsys, f"{f}: not a directory")
    assert not (tmp_path / "out").exists()
