"""Checkpoints and the reference log-prob cache on gs://, against a real GCS emulator (fake-gcs-server).

orbax writes metadata through etils.epath (→ fsspec/gcsfs, which honours STORAGE_EMULATOR_HOST) and array data
through tensorstore's own GCS driver. Emulator-only settings live here, never in lr_jax:
- TENSORSTORE_GCS_HTTP_URL: tensorstore's GCS endpoint (it ignores STORAGE_EMULATOR_HOST);
- GOOGLE_AUTH_TOKEN_FOR_TESTING: a fixed bearer token, so tensorstore never looks for (or sends) real
  credentials;
- GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false before gcsfs is imported: its zonal/HNS probe stalls ~60 s per
  bucket against an emulator.
EPATH_USE_TF=false is NOT set here: lr_jax.checkpoint sets it for gs:// directories; these tests check that.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from lr_jax.parallel.cpu_mode import xla_flags
from tests.helpers.paths import ROOT

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # must precede the first gcsfs import



@pytest.fixture
def gcs_root(gcs_bucket: str, gcs_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """`gs://<fresh bucket>` with orbax's two storage layers pointed at the emulator."""
    if "gcsfs" in sys.modules:
        import gcsfs

        assert gcsfs.GCSFileSystem.__name__ == "GCSFileSystem", "gcsfs imported with HNS support on"
    monkeypatch.setenv("TENSORSTORE_GCS_HTTP_URL", gcs_server.url)
    monkeypatch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator-test-token")
    monkeypatch.delenv("EPATH_USE_TF", raising=False)
    yield f"gs://{gcs_bucket}"


def _blobs(gs_dir: str) -> list[str]:
    """Object names under `gs://bucket/prefix`, relative to the prefix, listed with google-cloud-storage."""
    from google.cloud import storage as gcs

    bucket, _, prefix = gs_dir[len("gs://"):].partition("/")
    prefix = prefix.rstrip("/") + "/"
    return sorted(b.name[len(prefix):] for b in gcs.Client(project="test").list_blobs(bucket, prefix=prefix))


def _steps(gs_dir: str) -> list[int]:
    return sorted({int(n.split("/")[0]) for n in _blobs(gs_dir) if n.split("/")[0].isdigit()})


def _state(seed: int) -> dict[str, Any]:
    """A small train-state-like tree sharded over 8 devices in several ways (and one replicated scalar)."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((4, 2), ("data", "fsdp"))
    rng = np.random.default_rng(seed)

    def put(x: np.ndarray, spec: P) -> jax.Array:
        return jax.device_put(x, NamedSharding(mesh, spec))

    return {
        "params": {"w": put(rng.standard_normal((8, 6)).astype(np.float32), P("data", "fsdp")),
                   "emb": put(rng.standard_normal((16, 4)).astype(jnp.bfloat16), P(None, "fsdp")),
                   "bias": put(rng.standard_normal(6).astype(np.float32), P())},
        "step": put(np.int32(seed), P()),
    }


def _assert_same(got: Any, want: Any) -> None:
    import jax

    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape, path
        assert g.sharding == w.sharding, (path, g.sharding, w.sharding)
        np.testing.assert_array_equal(np.asarray(g.astype(np.float32)), np.asarray(w.astype(np.float32)),
                                      err_msg=str(path))


def test_save_restore_sharded_state_on_gcs(gcs_root: str) -> None:
    from etils import epath

    from lr_jax.training.checkpoint import Checkpointer, abstract_like

    # An earlier epath call (TFDS does them) caches "TensorFlow installed -> use tf.io.gfile for gs://";
    # the Checkpointer must still route gs:// to gcsfs (tf.io.gfile cannot reach an emulator).
    assert epath.Path(__file__).exists()
    directory = f"{gcs_root}/runs/a/ckpt"
    state = _state(3)
    ckpt = Checkpointer(directory, keep=3, async_save=True)
    assert ckpt.latest_step() is None
    ckpt.save(3, state, {"epoch": 1, "cursor": 17}, force=True)
    ckpt.wait()
    names = _blobs(directory)
    assert "3/commit_success.txt" in names and any(n.startswith("3/state/") for n in names), names
    assert not [n for n in names if "tmp" in n.split("/")[0]], names  # no uncommitted step left behind
    restored, data_state = ckpt.restore(3, abstract_like(state))
    ckpt.close()
    _assert_same(restored, state)
    assert data_state == {"epoch": 1, "cursor": 17}
    assert os.environ["EPATH_USE_TF"] == "false"


def test_keep_n_deletes_old_steps_in_bucket_and_reopen_finds_latest(gcs_root: str) -> None:
    from lr_jax.training.checkpoint import Checkpointer, abstract_like

    directory = f"{gcs_root}/ckpt"
    ckpt = Checkpointer(directory, keep=2, async_save=True)
    for step in (1, 2, 3, 4):
        ckpt.save(step, _state(step), {"cursor": step}, force=True)
    ckpt.close()
    assert _steps(directory) == [3, 4]
    # Something else beside the steps (the reference cache lives there) does not confuse orbax.
    from lr_jax.io import storage

    storage.write_bytes(f"{directory}/reference_logps.p0.npz", b"not a step")
    reopened = Checkpointer(directory, keep=2)
    assert reopened.latest_step() == 4
    restored, data_state = reopened.restore(4, abstract_like(_state(0)))
    reopened.close()
    _assert_same(restored, _state(4))
    assert data_state == {"cursor": 4}


def test_missing_bucket_is_a_config_error_before_training(gcs_root: str) -> None:
    from lr_jax.training.checkpoint import Checkpointer
    from lr_jax.training.config import ConfigError

    want = r"dir=gs://no-such-bucket-x/ck: bucket gs://no-such-bucket-x does not exist$"
    with pytest.raises(ConfigError, match=want):
        Checkpointer("gs://no-such-bucket-x/ck")


def test_reference_cache_roundtrip_on_gcs(gcs_root: str) -> None:
    from lr_jax.training.reference_cache import ReferenceCache, cache_path

    path = cache_path(f"{gcs_root}/ckpt/", 0)
    assert path == f"{gcs_root}/ckpt/reference_logps.p0.npz"
    assert ReferenceCache.load(path, 2) is None
    rng = np.random.default_rng(0)
    batch = {k: rng.integers(0, 50, (3, 8)) for k in ("tokens", "targets", "loss_mask", "positions",
                                                        "segment_ids", "branch_ids")}
    chosen, rejected = rng.standard_normal((3, 2)), rng.standard_normal((3, 2))
    cache = ReferenceCache(2)
    cache.add(batch, chosen, rejected)
    cache.mark_covered(0, 4)
    cache.save(path)
    back = ReferenceCache.load(path, 2)
    assert back is not None and len(back) == 3 and back.covered == (0, 4)
    assert back.covers(2, 4) and not back.covers(2, 5)
    c, r = back.lookup(batch)
    np.testing.assert_array_equal(c, chosen.astype(np.float32))
    np.testing.assert_array_equal(r, rejected.astype(np.float32))
    back.mark_covered(4, 6)  # adjacent: merged
    assert back.covered == (0, 6)
    back.mark_covered(8, 9)  # disjoint: only the new range is claimed
    assert back.covered == (8, 9)


class _RefPassProbe:
    """`Trainer._prepare_reference` on a real data pipeline, with a cheap deterministic stand-in for the
    jitted reference forward (the numerics are covered end to end below): counts what it computes."""

    def __init__(self, tmp_path: pathlib.Path, steps: int) -> None:
        from lr_jax.training import data as train_data
        from lr_jax.training.config import from_config_dict
        from lr_jax.training.trainer import Trainer

        c = _cpu_dpo_dict()
        c["data"].update(synthetic_pairs=64, synthetic_eval_pairs=8, batch_size=8)
        c["train"].update(steps=steps, out_dir=str(tmp_path / "out"))
        self.trainer = trainer = object.__new__(Trainer)
        trainer.cfg = from_config_dict(c)
        trainer.data = train_data.build(trainer.cfg)
        trainer.use_ref_cache = True
        trainer.out_dir, trainer.ckpt_dir = str(tmp_path / "out"), str(tmp_path / "ckpt")
        os.makedirs(trainer.ckpt_dir, exist_ok=True)
        trainer._ref_compute = self._compute
        self.computed = 0

    def _compute(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        self.computed += 1
        s = batch["tokens"].sum(axis=1, keepdims=True).astype(np.float32)  # [batch, P=1]
        return s, -s

    def run(self, start: int | None) -> Any:
        """`start`: the restored step (None = a new run)."""
        self.computed = 0
        self.trainer.state = {"step": np.int32(start or 0)}
        self.trainer._prepare_reference(resumed=start is not None)
        return self.trainer.ref_cache

    def check_rows(self, lo: int, hi: int) -> None:
        it = self.trainer.data.train_iterator()
        batches = [next(it) for _ in range(hi)][lo:] + self.trainer.data.eval_batches()
        for b in batches:
            c, r = self.trainer.ref_cache.lookup(b)
            np.testing.assert_array_equal(c, b["tokens"].sum(axis=1, keepdims=True))
            np.testing.assert_array_equal(r, -c)


def _cpu_dpo_dict() -> dict[str, Any]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cpu_dpo", ROOT / "configs" / "cpu_dpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config().to_dict()


def test_reference_pass_computes_only_what_the_cache_lacks(tmp_path: pathlib.Path) -> None:
    from lr_jax.training.reference_cache import ReferenceCache

    probe = _RefPassProbe(tmp_path, steps=4)
    n_eval = len(probe.trainer.data.eval_batches())
    assert n_eval >= 1
    cache_file = tmp_path / "ckpt" / "reference_logps.p0.npz"
    # New run: every train batch and every eval batch, saved beside the checkpoints.
    probe.run(None)
    assert probe.computed == 4 + n_eval and cache_file.exists()
    assert ReferenceCache.load(str(cache_file), 1).covered == (0, 4)
    # Resumed with the whole range cached: nothing computed.
    probe.run(2)
    assert probe.computed == 0
    # Resumed, now training for 6 steps: only batches 4 and 5.
    cfg = probe.trainer.cfg
    probe.trainer.cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=6))
    probe.run(4)
    assert probe.computed == 2 and ReferenceCache.load(str(cache_file), 1).covered == (0, 6)
    probe.check_rows(0, 6)
    # Resumed with the cache lost: batches from the restored step on (and eval) are recomputed.
    cache_file.unlink()
    probe.run(3)
    assert probe.computed == 3 + n_eval
    assert ReferenceCache.load(str(cache_file), 1).covered == (3, 6)
    probe.check_rows(3, 6)
    # A cache from before this change, in out_dir with no coverage record: reused, then moved beside the
    # checkpoints with its coverage.
    legacy = tmp_path / "out" / "reference_logps.p0.npz"
    os.replace(cache_file, legacy)
    old = ReferenceCache.load(str(legacy), 1)
    old.covered = None
    old.save(str(legacy))
    probe.run(4)
    assert probe.computed == 0 and ReferenceCache.load(str(cache_file), 1).covered == (4, 6)


# --------------------------------------------------------------------------- end to end (the CLI)
# Tiny cpu_dpo (same mesh: data 2 x fsdp 2 x sequence 2). A constant LR, so a 4-step run continued to 6 and 8
# follows exactly the optimizer trajectory of an uninterrupted 8-step run.
TINY = ["--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.save_every=2",
        "--config.data.synthetic_pairs=64", "--config.data.batch_size=8",
        "--config.data.synthetic_eval_pairs=8",
        "--config.model.hidden_size=32", "--config.model.intermediate_size=64", "--config.model.num_layers=1",
        "--config.model.head_dim=16", "--config.optim.schedule=constant", "--config.optim.warmup_steps=0",
        "--config.train.progress_bar=false", "--config.train.tensorboard=false", "--config.train.plot=false"]


def _train(out_dir: pathlib.Path, ckpt_dir: str, steps: int, cache_dir: pathlib.Path) -> str:
    """One `python -m lr_jax.train` process; returns its stderr. Compiled programs are shared through a
    persistent compilation cache (same programs in every run) to keep the test short."""
    env = dict(os.environ)
    env.update(XLA_FLAGS=xla_flags(8), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("EPATH_USE_TF", None)  # lr_jax.checkpoint must set it itself
    cmd = [sys.executable, "-m", "lr_jax.train", "--config", str(ROOT / "configs/cpu_dpo.py"),
           f"--config.train.out_dir={out_dir}", f"--config.train.checkpoint_dir={ckpt_dir}",
           f"--config.train.steps={steps}", *TINY]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stderr


def _losses(out_dir: pathlib.Path) -> dict[int, float]:
    from lr_jax.training.metrics import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(str(out_dir / "metrics.jsonl"))}


@pytest.mark.slow
def test_train_cli_checkpoints_to_gcs_resumes_on_a_fresh_disk_and_recomputes_a_lost_reference_cache(
        gcs_root: str, tmp_path: pathlib.Path) -> None:
    from lr_jax.io import storage

    jit_cache = tmp_path / "jit-cache"
    # Uninterrupted 8-step run, everything local: the losses every resumed step must reproduce.
    _train(tmp_path / "ref", str(tmp_path / "ref-ckpt"), 8, jit_cache)
    want = _losses(tmp_path / "ref")
    assert sorted(want) == list(range(1, 9))
    assert (tmp_path / "ref-ckpt" / "reference_logps.p0.npz").exists()  # beside the checkpoints
    assert not (tmp_path / "ref" / "reference_logps.p0.npz").exists()

    ckpt = f"{gcs_root}/dpo/ckpt"
    cache_obj = f"{ckpt}/reference_logps.p0.npz"
    # 1) Steps 1-4 on "VM 1": checkpoints and the reference cache go to the bucket.
    log = _train(tmp_path / "vm1", ckpt, 4, jit_cache)
    assert "resumed" not in log
    assert _steps(ckpt) == [2, 4] and storage.exists(cache_obj)
    # 2) "VM 2", empty local disk: resumes from the bucket, loads the cache, computes steps 5-6's rows.
    log = _train(tmp_path / "vm2", ckpt, 6, jit_cache)
    assert "resumed from checkpoint step 4" in log
    assert f"loaded 40 reference rows from {cache_obj}" in log
    assert "reference pass (cache incomplete" in log
    got = _losses(tmp_path / "vm2")
    assert sorted(got) == [5, 6]
    # 3) The cache is lost (deleted from the bucket): "VM 3" recomputes it from the initial params.
    storage.delete(cache_obj)
    log = _train(tmp_path / "vm3", ckpt, 8, jit_cache)
    assert "resumed from checkpoint step 6" in log and "reference pass (cache missing" in log
    got.update(_losses(tmp_path / "vm3"))
    assert sorted(got) == [5, 6, 7, 8] and storage.exists(cache_obj)
    got.update(_losses(tmp_path / "vm1"))
    steps = range(1, 9)
    np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=0, atol=1e-6)
    assert _steps(ckpt) == [4, 6, 8]  # keep_checkpoints=3 in the bucket
