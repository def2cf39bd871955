"""`lr_jax.plan`: the trainer's real DPO step compiled for a small TPU topology on this CPU machine.

Needs libtpu (compile-only TPU devices); skipped with the reason where it is not installed. Each compile is
a tiny model on 4 or 8 chips (a few seconds).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from lr_jax.model.config import ModelConfig
from lr_jax.training.config import Config, default_config_dict, from_config_dict

libtpu = pytest.importorskip("libtpu", reason="libtpu not installed (pip install -e '.[plan]'): no TPU "
                             "topology to compile for")

from lr_jax.training import plan  # noqa: E402


def _cfg(seq_len: int, data: int = 1, fsdp: int = -1, sequence: int = 1) -> Config:
    model = ModelConfig.tiny(vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=32, attention_backend="ring",
                             attention_block_size=128, dtype="bfloat16")
    c = default_config_dict(model)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = data, fsdp, 1, sequence
    c.data.seq_len, c.data.batch_size = seq_len, 8
    c.optim.grad_accum = 1
    c.dpo.logprob_chunk_size = 256
    return from_config_dict(c)


@pytest.fixture(scope="module")
def reports() -> dict[str, plan.Report]:
    four, eight = plan.topology_devices("v5p:2x2x1"), plan.topology_devices("v5p:2x2x2")
    assert (len(four), len(eight)) == (4, 8)
    return {
        "fsdp4 S512": plan.plan_train(_cfg(512), "v5p-8", devices=four),
        "fsdp4 S2048": plan.plan_train(_cfg(2048), "v5p-8", devices=four),
        "fsdp4 seq2 S2048": plan.plan_train(_cfg(2048, fsdp=4, sequence=2), "v5p-16", devices=eight),
        "fsdp8 S2048": plan.plan_train(_cfg(2048), "v5p-16", devices=eight),
    }


def test_memory_grows_with_seq_len_and_shrinks_with_shards(reports: dict[str, plan.Report]) -> None:
    r = reports
    assert all(x.fits and x.device_kind.startswith("TPU v5") for x in r.values())
    temps = {k: dict(x.rows)["temporaries"] for k, x in r.items()}
    # 4x the tokens per chip: more activation memory.
    assert temps["fsdp4 S2048"] > 2 * temps["fsdp4 S512"]
    assert r["fsdp4 S2048"].total > r["fsdp4 S512"].total
    # The same rows over twice the chips, as sequence shards or as fsdp shards: less per chip (measured:
    # temporaries 0.78x with sequence 2; the tiny model's ~11 MB program does not shrink).
    for more in ("fsdp4 seq2 S2048", "fsdp8 S2048"):
        assert temps[more] < 0.85 * temps["fsdp4 S2048"], more
        assert r[more].total < 0.9 * r["fsdp4 S2048"].total, more
    # ZeRO over the context axis: fsdp 4 x sequence 2 holds the state of 8 shards, like fsdp 8.
    state = lambda x: dict(x.rows)["parameters"] + dict(x.rows)["optimizer state"]
    assert state(r["fsdp4 seq2 S2048"]) == pytest.approx(state(r["fsdp8 S2048"]), rel=0.05)
    assert state(r["fsdp4 seq2 S2048"]) < 0.6 * state(r["fsdp4 S2048"])


def test_analytic_flops_and_roofline(reports: dict[str, plan.Report]) -> None:
    r = reports["fsdp4 S2048"]
    f = r.flops
    assert f["peak"] == 459e12 and f["hardware"] > f["model"] > 0
    assert f["step_time_s"] == pytest.approx(f["hardware"] / (459e12 * 4))
    assert "roofline" in r.table() and "fits" in r.table()


def test_topology_names_and_bad_input() -> None:
    assert plan.topology_name("v5p-8") == "v5p:2x2x1"
    assert plan.topology_name("v5litepod-32") == "v5e:4x8"
    assert plan.topology_name("v5e-16") == "v5e:4x4"
    with pytest.raises(plan.PlanError, match="--topology 'v5p-7'"):
        plan.topology_name("v5p-7")
    out = subprocess.run([sys.executable, "-m", "lr_jax.plan", "--config", "configs/cpu_dpo.py",
                          "--topology", "v9-3"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: --topology 'v9-3': unknown slice")


def test_grad_accum_auto_is_one_row_per_batch_shard() -> None:
    c = _cfg(512)
    c = Config(**{**c.__dict__, "optim": type(c.optim)(**{**c.optim.__dict__, "grad_accum": -1})}).validate()
    assert c.grad_accum_for(c.mesh_shape(4)) == 2  # 8 rows / fsdp 4
    assert c.grad_accum_for(c.mesh_shape(8)) == 1


def test_analytic_flops_match_xla_cost_analysis_of_an_unscanned_model() -> None:
    """`cost_analysis()` counts a loop body once, so check the analytic count where nothing loops: layers
    unrolled, no remat, one micro-batch, reference attention (it computes every score: 2x causal)."""
    import jax

    from lr_jax.parallel.mesh import make_mesh
    from lr_jax.training import program
    from lr_jax.training.metrics import train_flops_per_token
    from lr_jax.training.step import make_optimizer

    model = ModelConfig.tiny(vocab_size=512, hidden_size=256, intermediate_size=768, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=64, attention_backend="reference",
                             scan_layers=False, remat_policy="none")
    c = default_config_dict(model)
    c.mesh.data, c.mesh.fsdp = 1, 1
    c.data.seq_len, c.data.batch_size = 256, 2
    c.dpo.logprob_chunk_size = 256
    cfg = from_config_dict(c)
    mesh = make_mesh(devices=jax.devices()[:1])
    prog = program.build(cfg, mesh, make_optimizer(cfg.optim, 10)[0])
    xla = prog.lower_step().compile().cost_analysis()["flops"]
    tokens = 2 * 256
    causal = train_flops_per_token(model, 256) * tokens
    full_attn = causal + 6 * model.num_layers * model.num_heads * model.head_dim * 256 * tokens  # 2x attn
    # XLA also counts elementwise work (norms, softmax, AdamW): a little above the matmul count.
    assert 1.0 < xla / full_attn < 1.2, (xla, full_attn)


def test_sample_job_compiles_prefill_and_decode() -> None:
    four = plan.topology_devices("v5p:2x2x1")
    cfg = _cfg(512)
    short, long = (plan.plan_sample(cfg, "v5p-8", num_samples=n, max_new_tokens=t, devices=four)
                   for n, t in ((2, 16), (8, 64)))
    assert [r.job for r in short] == ["prefill", "decode"] and all(r.fits for r in short + long)
    assert dict(short[1].rows)["prefix KV cache"] > 0
    # More rows x more steps: a bigger tail cache in the decode loop.
    assert long[1].total > short[1].total


def _splash_cfg(backend: str, block_kernel: str, sequence: int) -> Config:
    """One layer, 4 rows of 512 tokens: the smallest step whose ring chunks (512 / 4) fill splash tiles."""
    model = ModelConfig.tiny(vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=1,
                             num_heads=4, num_kv_heads=2, head_dim=32, attention_backend=backend,
                             ring_block_kernel=block_kernel, attention_block_size=128, dtype="bfloat16")
    c = default_config_dict(model)
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor, c.mesh.sequence = 1, -1, 1, sequence
    c.data.seq_len, c.data.batch_size = 512, 4
    c.optim.grad_accum = 1
    c.dpo.logprob_chunk_size = 256
    return from_config_dict(c)


SPLASH_CASES = [("splash", "jax", 1), ("ring", "splash", 2)]


@pytest.mark.parametrize(("backend", "block_kernel", "sequence"), SPLASH_CASES,
                         ids=["splash", "ring+splash"])
def test_splash_compiles_as_the_mosaic_kernel_for_tpu(backend: str, block_kernel: str, sequence: int) -> None:
    """The plan builds for TPU: splash is accepted off a TPU and compiled as the Mosaic custom call (Pallas
    interpret mode would leave no `tpu_custom_call` in the executable); its FLOPs are counted analytically."""
    from lr_jax.errors import ConfigError
    from lr_jax.model import attention

    cfg = _splash_cfg(backend, block_kernel, sequence)
    field = "attention_backend" if backend == "splash" else "ring_block_kernel"
    # Running it here (CPU) is still refused, naming the field; building for TPU is not.
    with pytest.raises(ConfigError, match=rf"config\.model\.{field}: 'splash' is not available here"):
        cfg.mesh_shape(4)
    with attention.building_for("tpu"):
        assert cfg.mesh_shape(4)["sequence"] == sequence
    assert attention.target_platform() == "cpu"  # the context is left behind

    r = plan.plan_train(cfg, "v5p-8", devices=plan.topology_devices("v5p:2x2x1"))
    assert r.fits and r.compiled is not None
    assert "tpu_custom_call" in r.compiled.as_text()
    table = r.table()
    assert "attention kernel" in table and "TPU Pallas splash kernel (Mosaic custom call)" in table
    assert "attention FLOPs (analytic)" in table and "cost_analysis() does not count them" in table
    # Causal QK^T and PV (2 matmuls x 2 FLOPs x heads x head_dim per query-key pair, seq/2 keys per query
    # on average) for forward + 2x backward (no remat, precomputed reference).
    m = cfg.model
    fwd = 4 * m.num_heads * m.head_dim * m.num_layers * (4 * 512) * 512 / 2
    assert r.flops["attention"] == pytest.approx(3 * fwd)
    assert r.flops["attention"] < r.flops["hardware"]
