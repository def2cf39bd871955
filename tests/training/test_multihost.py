"""Multi-process training on CPU: 2 processes x 4 devices must train exactly like 1 process x 8 devices.

Each process is a real `lr_jax.train` run joined with `jax.distributed.initialize` (gloo collectives), one
process per "host" as on a TPU pod: its own out_dir (tokenizer, metrics on process 0), one shared
checkpoint_dir. The data is a preference-record directory of 4 files with a 25 % held-out split: each host
reads only the 2 files of its batch rows, and the hosts agree on the number of eval batches. The 2-process
runs use a mesh whose devices are ordered so that each process holds non-contiguous rows of the global
batch (process 0: row blocks 0 and 2, process 1: 1 and 3), the layout a pod's physical topology can
produce; the reference is a plain single-process run of the same config.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from lr_jax.training.metrics import read_metrics
from tests.helpers.paths import ROOT

STEPS = 6
# configs/cpu_dpo.py shrunk (mesh unchanged: data 2 x fsdp 2 x sequence 2 = 8 devices).
SMALL = [f"--config.train.steps={STEPS}", "--config.train.save_every=0", "--config.train.log_every=1",
         "--config.train.eval_every=0", "--config.data.batch_size=8", "--config.data.eval_fraction=0.25",
         "--config.data.synthetic_pairs=0", "--config.model.hidden_size=32",
         "--config.model.intermediate_size=64", "--config.model.num_layers=1", "--config.model.head_dim=16",
         "--config.train.progress_bar=false", "--config.train.tensorboard=false", "--config.train.plot=false"]

# Runs lr_jax.train with the mesh's devices in an interleaved process order (see module docstring) and
# prints this host's global batch rows (so the test can check the layout really is non-contiguous) and the
# record files it read.
LAUNCHER = """
import json
import os
import sys
import jax
from lr_jax.parallel import mesh as sharding
from lr_jax.training import data as train_data

_make_mesh = sharding.make_mesh

def make_mesh(data=1, fsdp=1, tensor=1, sequence=1, devices=None):
    devs = list(jax.devices() if devices is None else devices)
    block = tensor * sequence  # devices that share one block of batch rows
    per = [[d for d in devs if d.process_index == p] for p in range(jax.process_count())]
    chunks = [[q[i:i + block] for i in range(0, len(q), block)] for q in per]
    order = [d for group in zip(*chunks) for chunk in group for d in chunk]
    return _make_mesh(data, fsdp, tensor, sequence, devices=order)

sharding.make_mesh = make_mesh
_build = train_data.build

def build(*args, **kwargs):
    data = _build(*args, **kwargs)
    print("HOST_ROWS", jax.process_index(), list(map(int, data.rows)), file=sys.stderr, flush=True)
    files = sorted(os.path.basename(f) for f in data.files_read)
    print("HOST_FILES", jax.process_index(), json.dumps(files), file=sys.stderr, flush=True)
    return data

train_data.build = build
import lr_jax.train  # noqa: E402  (after the patch: the trainer imports make_mesh by name)

lr_jax.train.main(["lr_jax.train", *sys.argv[1:]])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, cache_dir: pathlib.Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT)
    # The runs compile the same programs again and again: share them (speed only; same executables).
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    return env


def _args(out_dir, ckpt_dir, *extra) -> list[str]:
    return ["--config", str(ROOT / "configs/cpu_dpo.py"), f"--config.train.out_dir={out_dir}",
            f"--config.train.checkpoint_dir={ckpt_dir}", *SMALL, *extra]


@pytest.fixture(scope="module")
def records_dir(tmp_path_factory) -> str:
    """80 demo pairs (the cpu_dpo synthetic task) in 4 record files: F = B/2, 2 files per host."""
    from lr_jax.data import demo
    from lr_jax.io import records

    out = str(tmp_path_factory.mktemp("records") / "pairs")
    records.write_pairs(demo.make_synthetic_pairs(80, 0, context_tokens=48, num_facts=2), out, num_shards=4)
    return out


def _losses(out_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(os.path.join(out_dir, "metrics.jsonl"))}


def _ckpt_steps(ckpt_dir) -> list[int]:
    d = pathlib.Path(ckpt_dir)
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


class Cluster:
    """2 trainer processes on this machine; kills both (and shows their logs) if anything goes wrong."""

    def __init__(self, tmp: pathlib.Path, cache: pathlib.Path, name: str, *extra: str) -> None:
        port = _free_port()
        self.out = [tmp / f"{name}.host{i}" for i in range(2)]
        self.ckpt = tmp / f"{name}.ckpt"
        self.logs = [tmp / f"{name}.host{i}.{time.monotonic_ns()}.log" for i in range(2)]
        dist = ["--config.train.distributed=true", f"--config.train.coordinator_address=localhost:{port}",
                "--config.train.num_processes=2"]
        self.procs = []
        for i in range(2):
            cmd = [sys.executable, "-c", LAUNCHER, *_args(self.out[i], self.ckpt, *extra), *dist,
                   f"--config.train.process_id={i}"]
            with open(self.logs[i], "w") as log:
                proc = subprocess.Popen(cmd, env=_env(4, cache), stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(proc)

    def log_text(self) -> str:
        parts = []
        for i, path in enumerate(self.logs):
            lines = [ln for ln in path.read_text().splitlines() if "peer ranks" not in ln]  # gloo chatter
            parts.append(f"----- host {i} (exit {self.procs[i].poll()}) -----\n" + "\n".join(lines[-40:]))
        return "\n".join(parts)

    def fail(self, why: str) -> None:
        self.kill()
        raise AssertionError(f"{why}\n{self.log_text()}")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def wait(self, timeout: float = 240) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.fail(f"timed out after {timeout}s (a host in a collective the other never joined?)")
            except BaseException:  # e.g. Ctrl-C: leave no trainer behind
                self.kill()
                raise
        return [p.returncode for p in self.procs]

    def run(self, timeout: float = 240) -> None:
        codes = self.wait(timeout)
        if codes != [0, 0]:
            self.fail(f"exit codes {codes}")

    def host_rows(self, tag: str = "HOST_ROWS") -> dict[int, list]:
        rows = {}
        for path in self.logs:
            for ln in path.read_text().splitlines():
                if ln.startswith(tag):
                    _, p, lst = ln.split(" ", 2)
                    rows[int(p)] = json.loads(lst)
        return rows


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def single(tmp_path_factory, cache, records_dir):
    """The independent reference: one process, 8 devices, the default mesh, dpo.reference=precomputed.

    (`model` mode trains bit-identically in one process — same reference params, same step — so this run
    is the reference for both 2-process modes.)
    """
    out_dir = tmp_path_factory.mktemp("single") / "run"
    cmd = [sys.executable, "-m", "lr_jax.train", *_args(out_dir, out_dir / "ckpt"),
           f"--config.data.path={records_dir}"]
    out = subprocess.run(cmd, env=_env(8, cache), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out_dir


@pytest.fixture(scope="module")
def two(tmp_path_factory, cache, records_dir):
    """Uninterrupted 2-process runs, one per reference mode (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("two")
    runs = {}
    for mode in ("precomputed", "model"):
        runs[mode] = Cluster(tmp, cache, mode, f"--config.dpo.reference={mode}",
                             f"--config.data.path={records_dir}")
        runs[mode].run()
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["precomputed", "model"])
def test_two_processes_train_like_one(single, two, records_dir, mode):
    from lr_jax.data.sources import in_split
    from lr_jax.io.records import read_pairs

    cluster = two[mode]
    # The layout under test: each host holds two non-adjacent blocks of the 8-row global batch.
    assert cluster.host_rows() == {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}, cluster.log_text()
    # Records r ≡ j (mod 8) live in file r mod 4 = j mod 4: host 0 needs files 0 and 1, host 1 files 2 and 3.
    shards = [f"preference_pairs-train.tfrecord-{i:05d}-of-00004" for i in range(4)]
    assert cluster.host_rows("HOST_FILES") == {0: shards[:2], 1: shards[2:]}, cluster.log_text()
    assert not (cluster.out[1] / "metrics.jsonl").exists()  # only process 0 writes metrics
    got, want = _losses(cluster.out[0]), _losses(single)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1)), cluster.log_text()
    np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)],
                               rtol=0, atol=1e-5, err_msg=cluster.log_text())
    last, last_single = (read_metrics(os.path.join(d, "metrics.jsonl"))[-1] for d in (cluster.out[0], single))
    np.testing.assert_allclose(last["eval_loss"], last_single["eval_loss"], rtol=0, atol=1e-5)
    held = sum(in_split(p["prompt_id"], "eval", 0.25) for p in read_pairs(records_dir))
    assert last["eval_pairs"] == last_single["eval_pairs"] == held > 0  # every held-out pair, padding none


@pytest.mark.slow
def test_sigterm_on_one_host_saves_same_step_everywhere_then_resumes(two, cache, tmp_path, records_dir):
    want = _losses(two["precomputed"].out[0])
    data = f"--config.data.path={records_dir}"
    cluster = Cluster(tmp_path, cache, "pre", "--config.dpo.reference=precomputed", data)
    try:
        deadline = time.monotonic() + 240
        # The steps take ~0.1 s: signal host 1 as soon as it has joined the cluster and built its data (the
        # preemption notifier is up), well before the loop, so the agreed step (1 here) lands mid-run.
        while "HOST_ROWS" not in cluster.logs[1].read_text():
            if any(p.poll() is not None for p in cluster.procs) or time.monotonic() > deadline:
                cluster.fail("host 1 did not build its data before a host exited / the deadline")
            time.sleep(0.02)
        cluster.procs[1].send_signal(signal.SIGTERM)  # one host only: the other learns of it from the service
    except BaseException:
        cluster.kill()
        raise
    codes = cluster.wait(timeout=120)
    if codes != [0, 0]:
        cluster.fail(f"exit codes {codes} after SIGTERM to host 1")
    saved = _ckpt_steps(cluster.ckpt)
    assert saved and saved[-1] < STEPS, f"no mid-run checkpoint: {saved}\n{cluster.log_text()}"
    assert f"SIGTERM: saved checkpoint at step {saved[-1]}" in cluster.logs[0].read_text(), cluster.log_text()
    assert max(_losses(cluster.out[0])) == saved[-1]  # host 0 stopped at the agreed step, not later

    again = Cluster(tmp_path, cache, "pre", "--config.dpo.reference=precomputed", data)  # the same command
    again.run()
    assert f"resumed from checkpoint step {saved[-1]}" in again.logs[0].read_text(), again.log_text()
    got = _losses(again.out[0])
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[s] for s in sorted(want)], [want[s] for s in sorted(want)], rtol=0,
                               atol=1e-6, err_msg=again.log_text())


# ---------------------------------------------------------------------------------------------------------
# In-process checks of the pieces (no subprocesses): the data layout and the single-process flag.

def _data_cfg(tmp_path, **data):
    """configs/cpu_dpo.py with 8 rows per batch and 64 synthetic pairs (`data` overrides)."""
    import importlib.util

    from lr_jax.training.config import from_config_dict

    spec = importlib.util.spec_from_file_location("cpu_dpo", ROOT / "configs" / "cpu_dpo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config().to_dict()
    c["data"].update({"batch_size": 8, "synthetic_pairs": 64, "synthetic_eval_pairs": 8, **data})
    c["train"]["out_dir"] = str(tmp_path / "run")
    return from_config_dict(c)


def _global_batches(cfg, layout, steps, state=None):
    """Assemble `steps` global batches from hosts holding `layout` rows (a state, if given, first)."""
    from lr_jax.training import data as train_data

    its = [train_data.build(cfg, p, len(layout), rows=rows).train_iterator() for p, rows in enumerate(layout)]
    if state is not None:
        for it in its:
            it.set_state(state)
    out = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        batch = {k: np.zeros((cfg.data.batch_size, *v.shape[1:]), v.dtype) for k, v in parts[0].items()}
        for rows, part in zip(layout, parts, strict=True):
            for k, v in part.items():
                batch[k][rows] = v
        out.append(batch)
    return out, its


LAYOUTS = {"1 host": [list(range(8))], "2 hosts, interleaved": [[0, 1, 4, 5], [2, 3, 6, 7]],
           "4 hosts": [[0, 1], [2, 3], [4, 5], [6, 7]]}


def test_global_batch_and_eval_rows_do_not_depend_on_host_count(tmp_path):
    from lr_jax.training import data as train_data

    cfg = _data_cfg(tmp_path)
    want, _ = _global_batches(cfg, LAYOUTS["1 host"], 10)  # 64 pairs / 8 rows: crosses an epoch boundary
    assert len({b["tokens"].tobytes() for b in want}) == 10
    for name, layout in LAYOUTS.items():
        got, _ = _global_batches(cfg, layout, 10)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            for k in w:
                np.testing.assert_array_equal(g[k], w[k], err_msg=f"{name}: batch {i} {k}")
        evals = [train_data.build(cfg, p, len(layout), rows=rows).eval_batches()
                 for p, rows in enumerate(layout)]
        full = train_data.build(cfg).eval_batches()
        for p, rows in enumerate(layout):
            for b, f in zip(evals[p], full, strict=True):
                np.testing.assert_array_equal(b["tokens"], f["tokens"][rows], err_msg=name)


def test_data_state_resumes_on_a_different_host_count(tmp_path):
    cfg = _data_cfg(tmp_path)
    want, _ = _global_batches(cfg, LAYOUTS["1 host"], 9)
    _, (one,) = _global_batches(cfg, LAYOUTS["1 host"], 5)
    state = json.loads(json.dumps(one.get_state()))  # what a checkpoint stores
    assert sorted(map(int, state["rows"])) == list(range(8))
    got, _ = _global_batches(cfg, LAYOUTS["2 hosts, interleaved"], 4, state=state)
    for g, w in zip(got, want[5:], strict=True):
        np.testing.assert_array_equal(g["tokens"], w["tokens"])


def test_state_of_an_older_data_layout_cannot_resume(tmp_path):
    from lr_jax.data.errors import DataError

    cfg = _data_cfg(tmp_path)
    _, (one,) = _global_batches(cfg, LAYOUTS["1 host"], 1)
    state = one.get_state()
    with pytest.raises(DataError, match=r"cannot resume: saved data state \(version 2, batch_size 8\)"):
        one.set_state({**state, "version": 2})  # per-row streams by position after the split (superseded)
    with pytest.raises(DataError, match="cannot resume: saved data state has no entry for batch row 3"):
        one.set_state({**state, "rows": {k: v for k, v in state["rows"].items() if k != "3"}})


def test_too_few_examples_for_the_batch_is_a_clear_error(tmp_path):
    from lr_jax.data.errors import DataError
    from lr_jax.training import data as train_data

    with pytest.raises(DataError, match=r"4 training examples cannot fill data\.batch_size = 8"):
        train_data.build(_data_cfg(tmp_path, synthetic_pairs=4))


def test_host_rows_follow_the_sharding_not_the_process_index():
    import jax

    from lr_jax.parallel.mesh import make_mesh
    from lr_jax.parallel.rules import batch_sharding
    from lr_jax.training import data as train_data

    devs = jax.devices()  # 8 CPU devices, all in this process
    mesh = make_mesh(data=2, fsdp=2, sequence=2, devices=devs[::-1])
    sh = batch_sharding(mesh)
    assert list(train_data.host_rows(sh, (8, 16))) == list(range(8))
    # Which rows a device holds comes from the sharding: device 7 is first in this mesh, so it holds rows 0-1.
    idx = sh.devices_indices_map((8, 16))
    assert idx[devs[7]][0] == slice(0, 2, None) and idx[devs[0]][0] == slice(6, 8, None)


def test_local_preemption_flag_is_set_by_sigterm():
    from lr_jax.training.preemption import LocalPreemption, preemption_handler

    flag = preemption_handler().install()
    assert isinstance(flag, LocalPreemption)
    try:
        assert not flag.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not flag.should_stop(2) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert flag.should_stop(2)
    finally:
        flag.uninstall()


@pytest.mark.parametrize("source", ["records+eval_path", "records+eval_fraction", "prompts.jsonl (sft)"])
def test_file_data_is_host_count_independent_too(tmp_path, source):
    """The `data.path` branch: every host reads all record files, keeps its rows' examples."""
    from lr_jax.data import demo

    paths = demo.write_demo_dataset(str(tmp_path / "data"), n_train=48, n_eval=8, context_tokens=48,
                                    num_facts=2, num_shards=3)
    data = {"tokenizer": paths["tokenizer"], "path": paths["train"], "synthetic_pairs": 0}
    if source == "records+eval_path":
        data["eval_path"] = paths["eval"]
    elif source == "records+eval_fraction":
        data["eval_fraction"] = 0.25
    cfg = _data_cfg(tmp_path, **data)
    if source.endswith("(sft)"):
        import dataclasses

        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=paths["prompts"]),
                                  dpo=dataclasses.replace(cfg.dpo, objective="sft"))
    want, _ = _global_batches(cfg, LAYOUTS["1 host"], 4)
    got, _ = _global_batches(cfg, LAYOUTS["2 hosts, interleaved"], 4)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g["tokens"], w["tokens"])
        assert (w["segment_ids"] > 0).any(axis=1).all()  # every row holds data
    from lr_jax.training import data as train_data

    if source != "prompts.jsonl (sft)":
        full = train_data.build(cfg).eval_batches()
        assert full, "no eval batches"
        hosts = _hosts(cfg, LAYOUTS["2 hosts, interleaved"])
        counts = {j: c for h in hosts for j, c in h.eval_row_counts().items()}  # what the all-gather merges
        part = hosts[1].eval_batches(counts or None)
        for b, f in zip(part, full, strict=True):
            np.testing.assert_array_equal(b["tokens"], f["tokens"][[2, 3, 6, 7]])


# ---------------------------------------------------------------------------------------------------------
# Each host reads only its shard of a records directory: row j draws the records r ≡ j (mod B), which
# judge.pairs dealt to files r mod F; a host opens the files of its rows only.

N_RECORDS = 64
FILE_COUNTS = {"F = B": 8, "F = 2B": 16, "F = B/2": 4, "F = 3 (incompatible)": 3}


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
    """The same 64 pairs written with every F of FILE_COUNTS, plus the demo tokenizer."""
    from lr_jax.data import demo
    from lr_jax.io import records

    root = tmp_path_factory.mktemp("shards")
    pairs = demo.make_synthetic_pairs(N_RECORDS, 3, context_tokens=48, num_facts=2)
    dirs = {}
    for name, F in FILE_COUNTS.items():
        dirs[name] = str(root / f"f{F}")
        records.write_pairs(pairs, dirs[name], num_shards=F)
    return pairs, dirs, demo.build_tiny_tokenizer(str(root / "tok"))


def _hosts(cfg, layout):
    from lr_jax.training import data as train_data

    return [train_data.build(cfg, p, len(layout), rows=rows) for p, rows in enumerate(layout)]


def _assemble(parts, layout, B):
    """One global batch from the hosts' parts (host p holds rows layout[p])."""
    batch = {k: np.zeros((B, *v.shape[1:]), v.dtype) for k, v in parts[0].items()}
    for rows, part in zip(layout, parts, strict=True):
        for k, v in part.items():
            batch[k][rows] = v
    return batch


def _train_and_eval(hosts, layout, B, steps):
    its = [h.train_iterator() for h in hosts]
    train = [_assemble([next(it) for it in its], layout, B) for _ in range(steps)]
    counts = {j: c for h in hosts for j, c in h.eval_row_counts().items()}  # what the all-gather merges
    evals = [h.eval_batches(counts) for h in hosts]
    assert len({len(e) for e in evals}) == 1, "hosts disagree on the number of eval batches"
    return train, [_assemble(list(parts), layout, B) for parts in zip(*evals, strict=True)]


def _needed_files(F, rows, B):
    """Brute force: the files holding a record r (r mod F) with r mod B among `rows`."""
    return sorted({r % F for r in range(N_RECORDS) if r % B in set(rows)})


@pytest.fixture(scope="module")
def reference_batches(shard_sets, tmp_path_factory):
    """1 host, F = B: 8 train batches (more than one epoch of a row's ~6 examples) and all eval batches."""
    _, dirs, tok = shard_sets
    cfg = _data_cfg(tmp_path_factory.mktemp("ref"), path=dirs["F = B"], tokenizer=tok, eval_fraction=0.25,
                    synthetic_pairs=0)
    hosts = _hosts(cfg, LAYOUTS["1 host"])
    return (*_train_and_eval(hosts, LAYOUTS["1 host"], 8, 8), hosts[0])


def test_record_streams_are_rows_of_the_global_record_index(shard_sets, reference_batches):
    """Row j's training stream is the train-split records r ≡ j (mod B) in r order (independent reference:
    the list that was written), and each eval row holds that row's held-out records."""
    from lr_jax.data.sources import in_split

    pairs, _, _ = shard_sets
    _, ev, one = reference_batches
    for j, stream in zip(one.rows, one._streams, strict=True):
        want = [pairs[r]["prompt_id"] for r in range(j, N_RECORDS, 8)
                if in_split(pairs[r]["prompt_id"], "train", 0.25)]
        assert [e.prompt_id for e in stream.examples] == want
    held = [r for r in range(N_RECORDS) if in_split(pairs[r]["prompt_id"], "eval", 0.25)]
    assert held, "no held-out records"
    counts = one.eval_row_counts()  # pairs_per_row = 1: one held-out record per packed row
    assert counts == {j: sum(r % 8 == j for r in held) for j in range(8)}
    assert len(ev) == max(counts.values()) > min(counts.values())  # short rows padded...
    for k, b in enumerate(ev):
        np.testing.assert_array_equal(b["pair_valid"][:, 0], [int(counts[j] > k) for j in range(8)])
        assert not b["segment_ids"][b["pair_valid"][:, 0] == 0].any()  # ...with empty rows


@pytest.mark.parametrize("files", list(FILE_COUNTS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_host_reads_only_its_rows_files(shard_sets, reference_batches, tmp_path, monkeypatch, caplog,
                                             files, layout):
    """Same global train and eval batches for every host layout and file count; each host opens exactly
    the files of its rows (all of them only when F and B share no factor — and then it says so)."""
    import shutil

    from lr_jax.io import records

    _, dirs, tok = shard_sets
    F, B, hosts_rows = FILE_COUNTS[files], 8, LAYOUTS[layout]
    want_train, want_eval, _ = reference_batches
    opened: list[list[str]] = []
    real_read_file = records.reader._read_file  # the module that calls it (lr_jax/io/records/reader.py)
    monkeypatch.setattr(records.reader, "_read_file",
                        lambda local, shown, *a, **k: (opened[-1].append(os.path.basename(local)),
                                                       real_read_file(local, shown, *a, **k))[1])
    hosts = []
    for p, rows in enumerate(hosts_rows):
        # A private copy without the files this host must not need: reading one would fail.
        need = _needed_files(F, rows, B)
        meta = records.read_metadata(dirs[files])
        private = tmp_path / f"host{p}"
        shutil.copytree(dirs[files], private)
        for f, name in enumerate(meta["shards"]):
            if f not in need:
                os.remove(private / name)
        cfg = _data_cfg(tmp_path / f"run{p}", path=str(private), tokenizer=tok, eval_fraction=0.25,
                        synthetic_pairs=0)
        opened.append([])
        caplog.clear()
        hosts.append(_hosts(cfg, [rows])[0])
        assert sorted(opened[-1]) == [meta["shards"][f] for f in need], f"host {p}"
        assert sorted(hosts[-1].files_read) == sorted(opened[-1])
        expected = {"F = B": len(rows), "F = 2B": 2 * len(rows), "F = B/2": len({j % F for j in rows}),
                    "F = 3 (incompatible)": F}[files]
        assert len(need) == expected
        warned = "reads all 3 record files" in caplog.text
        assert warned == (files == "F = 3 (incompatible)" and len(rows) < B), caplog.text
        if warned:
            assert "--num-shards` a multiple or divisor of 8 (e.g. 8 or 2)" in caplog.text
    train, ev = _train_and_eval(hosts, hosts_rows, B, 8)
    for i, (g, w) in enumerate(zip(train, want_train, strict=True)):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=f"train batch {i} {k}")
    assert len(ev) == len(want_eval)
    for i, (g, w) in enumerate(zip(ev, want_eval, strict=True)):
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=f"eval batch {i} {k}")


def test_gcs_dataset_downloads_only_the_hosts_files(shard_sets, reference_batches, gcs_bucket,
                                                    tmp_path, monkeypatch):
    from lr_jax.io import records

    pairs, _, tok = shard_sets
    cache = tmp_path / "cache"
    monkeypatch.setenv("LR_JAX_CACHE", str(cache))
    path = f"gs://{gcs_bucket}/pairs"
    meta = records.write_pairs(pairs, path, num_shards=16)
    rows = LAYOUTS["2 hosts, interleaved"][1]
    cfg = _data_cfg(tmp_path, path=path, tokenizer=tok, eval_fraction=0.25, synthetic_pairs=0)
    host = _hosts(cfg, [rows])[0]
    got = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert got == [meta["shards"][f] for f in _needed_files(16, rows, 8)] == [
        meta["shards"][f] for f in (2, 3, 6, 7, 10, 11, 14, 15)]
    first = next(host.train_iterator())
    for k, v in reference_batches[0][0].items():
        np.testing.assert_array_equal(first[k], v[rows], err_msg=k)


def test_too_few_records_or_an_empty_row_is_a_clear_error(shard_sets, tmp_path):
    from lr_jax.data.errors import DataError
    from lr_jax.data.sources import in_split
    from lr_jax.io import records

    pairs, _, tok = shard_sets
    records.write_pairs(pairs[:6], str(tmp_path / "six"), num_shards=2)
    cfg = _data_cfg(tmp_path, path=str(tmp_path / "six"), tokenizer=tok, synthetic_pairs=0)
    with pytest.raises(DataError, match=r"six: 6 records cannot fill data\.batch_size = 8 rows"):
        _hosts(cfg, LAYOUTS["1 host"])
    # 12 records, half held out: some row j in 4..7 (one record each, r = j) has only a held-out record.
    records.write_pairs(pairs[:12], str(tmp_path / "twelve"), num_shards=4)
    empty = [j for j in range(8) if not any(in_split(pairs[r]["prompt_id"], "train", 0.5)
                                            for r in range(j, 12, 8))]
    assert empty, "pick other records: every row has a training example"
    cfg = _data_cfg(tmp_path, path=str(tmp_path / "twelve"), tokenizer=tok, synthetic_pairs=0,
                    eval_fraction=0.5)
    with pytest.raises(DataError, match=rf"twelve \[train\]: batch row {empty[0]} has no training examples"):
        _hosts(cfg, LAYOUTS["1 host"])
