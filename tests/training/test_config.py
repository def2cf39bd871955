"""Typed config: every shipped config loads, bad values fail before compilation with the field named."""

import importlib.util

import pytest

from lr_jax.model import attention
from lr_jax.training.config import ConfigError, default_config_dict, from_config_dict
from tests.helpers.paths import CONFIGS


def _load(name):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


@pytest.mark.parametrize("name", ["cpu_dpo", "cpu_sft", "llama3_8b_dpo_64k", "glm4_9b_dpo_64k",
                                  "llama3_8b_lora_dpo_64k"])
def test_shipped_configs_validate(name):
    cfg = from_config_dict(_load(name))
    devices = 8 if name.startswith("cpu") else 32
    # The 64k configs are TPU programs (the splash kernel): validate them as built for a TPU slice.
    with attention.building_for("cpu" if name.startswith("cpu") else "tpu"):
        sizes = cfg.mesh_shape(devices)
    assert sizes["data"] * sizes["fsdp"] * sizes["tensor"] * sizes["sequence"] == devices
    if not name.startswith("cpu"):  # the paper's DPO recipe (LongReward, arXiv 2410.21252)
        lr = 1e-4 if "lora" in name else 1e-6  # adapters start at zero (configs/llama3_8b_lora_dpo_64k.py)
        assert (cfg.dpo.beta, cfg.dpo.sft_weight, cfg.optim.lr, cfg.data.batch_size) == (0.15, 0.1, lr, 16)
        assert 400 <= cfg.train.steps <= 800 and cfg.data.seq_len == 65536
        assert cfg.dpo.objective == "dpo" and cfg.dpo.loss_type == "sigmoid"
    assert cfg.dpo.objective == ("sft" if name == "cpu_sft" else "dpo")


def _base():
    return default_config_dict().to_dict()  # a plain dict: ConfigDict itself refuses type changes


@pytest.mark.parametrize(("edits", "message"), [
    ({"optim.lr": "1e-6"}, "config.optim.lr: expected float, got str"),
    ({"data.seq_len": 12.5}, "config.data.seq_len: expected int, got float"),
    ({"train.steps": True}, "config.train.steps: expected int, got bool"),
    ({"data.shuffle": 1}, "config.data.shuffle: expected bool, got int"),
    ({"optim.learning_rate": 1e-6}, "config.optim.learning_rate: unknown key; did you mean 'lr'"),
    ({"optimizer": {}}, "config.optimizer: unknown section; did you mean 'optim'"),
    ({"model.num_heads": 3}, "config.model: ModelConfig.num_heads (3) must be a multiple"),
    ({"model.hidden": 3}, "config.model.hidden: unknown key"),
    ({"dpo.loss_type": "kto"}, "config.dpo.loss_type: must be one of"),
    ({"dpo.loss_type": "ipo", "dpo.label_smoothing": 0.1},
     "config.dpo.label_smoothing: not used by loss_type 'ipo'"),
    ({"dpo.beta": 0.0}, "config.dpo.beta: must be > 0"),
    ({"optim.schedule": "step"}, "config.optim.schedule: must be one of"),
    ({"optim.grad_accum": 3}, "config.optim.grad_accum: 3 does not divide"),
    ({"dpo.reference": "online"}, "config.dpo.reference: must be one of"),
    ({"data.synthetic_distractor": "near"}, "config.data.synthetic_distractor: must be one of"),
    ({"train.out_dir": "gs://b/run"}, "config.train.out_dir: must be a local directory"),
    ({"train.init_from": "gs://b/llama"}, "config.train.init_from: must be a local directory"),
    ({"data.tokenizer": "gs://b/tok"}, "config.data.tokenizer: must be a local directory"),
])
def test_bad_values_name_the_field(edits, message):
    c = _base()
    for path, value in edits.items():
        if "." in path:
            section, key = path.split(".")
            c[section][key] = value
        else:
            c[path] = value
    with pytest.raises(ConfigError) as err:
        from_config_dict(c)
    assert message in str(err.value)


@pytest.mark.parametrize(("mesh", "data", "message"), [
    ((2, 2, 1, 1), {}, "data*fsdp*tensor*sequence = 4 but there are 8 devices"),
    ((1, -1, 1, 3), {}, "fixed axes multiply to 3, which does not divide 8"),
    ((1, 2, 1, 4), {"seq_len": 90}, "config.data.seq_len: 90 is not divisible by mesh.sequence = 4"),
    ((2, 4, 1, 1), {"batch_size": 4}, "not divisible by mesh data*fsdp = 8"),
    ((-1, -1, 1, 1), {}, "at most one axis may be -1"),
])
def test_impossible_mesh_fails_before_compilation(mesh, data, message):
    c = _base()
    c["mesh"].update(zip(("data", "fsdp", "tensor", "sequence"), mesh, strict=True))
    c["data"].update(data)
    cfg = from_config_dict(c)
    with pytest.raises(ConfigError) as err:
        cfg.mesh_shape(8)
    assert message in str(err.value)


def test_int_accepted_for_float_and_to_dict_round_trip():
    c = _base()
    c["optim"]["lr"] = 1  # ints are valid floats
    c["model"]["rope_scaling"] = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192, "rope_type": "llama3"}
    cfg = from_config_dict(c)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.model.rope_scaling.factor == 8.0
    assert from_config_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(("backend", "sequence", "message"), [
    ("splash", 2, "config.model.attention_backend: 'splash' cannot span mesh.sequence = 2; use 'ring'"),
    ("cudnn", 4, "config.model.attention_backend: 'cudnn' cannot span mesh.sequence = 4"),
    ("splash", 1, "config.model.attention_backend: 'splash' is not available here: splash is a TPU"),
    ("cudnn", 1, "config.model.attention_backend: 'cudnn' is not available here: cudnn attention needs"),
])
def test_attention_backend_checked_against_mesh_and_platform(backend, sequence, message):
    c = _base()
    c["mesh"].update(data=8 // (2 * sequence), fsdp=2, tensor=1, sequence=sequence)
    c["model"]["attention_backend"] = backend
    cfg = from_config_dict(c)
    with pytest.raises(ConfigError) as err:
        cfg.mesh_shape(8)
    assert message in str(err.value)


def _bounded_fields():
    import dataclasses

    from lr_jax.training.config import Config

    for section in dataclasses.fields(Config):
        if section.name == "model":
            continue
        for f in dataclasses.fields(section.default_factory):
            m = f.metadata
            for bound, outside in (("gt", lambda b: b), ("ge", lambda b: b - 1), ("lt", lambda b: b),
                                   ("le", lambda b: b + 1)):
                if m.get(bound) is not None:
                    yield section.name, f.name, outside(m[bound])
            if m.get("choices"):
                yield section.name, f.name, "no-such-choice"


@pytest.mark.parametrize(("section", "name", "value"), list(_bounded_fields()))
def test_every_declared_bound_and_choice_is_enforced(section, name, value):
    """The checks come from the fields' `option(...)` metadata: each declared bound and choice refuses a value
    just outside it, naming the field (issue 18: no hand-written copy of a bound to forget)."""
    c = _base()
    default = c[section][name]
    c[section][name] = float(value) if isinstance(default, float) else value
    with pytest.raises(ConfigError, match=rf"config\.{section}\.{name}: must be"):
        from_config_dict(c)


def test_bounds_were_declared_for_the_numbers_a_user_gets_wrong():
    names = {(s, n) for s, n, _ in _bounded_fields()}
    for field in [("train", "steps"), ("data", "batch_size"), ("optim", "lr"), ("dpo", "beta"),
                  ("data", "eval_fraction"), ("optim", "b2"), ("train", "nan_policy")]:
        assert field in names, field
