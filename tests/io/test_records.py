"""Preference-record schema: write/read round trips (local, gs:// emulator), stock tf.data + TFDS read-back,
host sharding, and clear errors on bad data."""

from __future__ import annotations

import json
import math
import os

import pytest

from lr_jax.io import records, storage
from lr_jax.io.records import FIELDS, FLOAT_FIELDS, RecordError, read_pairs, write_pairs


def make_pairs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        p = {
            "prompt_id": f"p{i}",
            "context": f"Kontext {i} — ünïcödé 长文本",
            "query": f"q{i}?",
            "chosen": f"good {i}",
            "rejected": f"bad {i}",
        }
        for j, f in enumerate(FLOAT_FIELDS):
            p[f] = float(i + j * 0.25)
        p["rejected_faithfulness"] = None if i % 2 else math.nan  # a failed dimension
        out.append(p)
    return out


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(
        sorted(got, key=lambda r: r["prompt_id"]), sorted(want, key=lambda r: r["prompt_id"]), strict=True
    ):
        assert set(g) == set(FIELDS)
        for f in FIELDS:
            wv = w[f]
            if f in FLOAT_FIELDS:
                wv = math.nan if wv is None else wv
                assert (math.isnan(g[f]) and math.isnan(wv)) or g[f] == pytest.approx(wv, rel=1e-6), f
            else:
                assert g[f] == wv, f


def test_local_roundtrip_tfdata_and_tfds(tmp_path) -> None:
    import tensorflow as tf

    pairs = make_pairs(5)
    out = str(tmp_path / "ds")
    meta = write_pairs(pairs, out, num_shards=2, metadata={"judge_model": "m", "fingerprint": "abc"})
    assert meta["num_records"] == 5 and meta["shard_lengths"] == [3, 2]
    assert sorted(os.listdir(out)) == sorted(
        [
            "dataset_info.json",
            "features.json",
            "metadata.json",
            *(records.shard_name("preference_pairs", i, 2) for i in range(2)),
        ]
    )
    assert_same(list(read_pairs(out)), pairs)

    # Stock TensorFlow, no lr_jax reader: TFRecordDataset + parse_single_example with the shared FEATURE_SPEC.
    files = sorted(str(p) for p in (tmp_path / "ds").glob("*.tfrecord-*"))
    ds = tf.data.TFRecordDataset(files).map(lambda x: tf.io.parse_single_example(x, records.FEATURE_SPEC))
    got = [
        {k: (v.decode() if isinstance(v, bytes) else float(v)) for k, v in ex.items()}
        for ex in ds.as_numpy_iterator()
    ]
    assert_same(got, pairs)
    # Our serialization is byte-identical to TensorFlow's for the same pair.
    assert records.encode_pair(pairs[0]) == _tf_example(pairs[0]).SerializeToString(deterministic=True)

    # GZIP shards are readable by stock tf.data too.
    gz = str(tmp_path / "gz")
    write_pairs(pairs, gz, compression="GZIP")
    ds = tf.data.TFRecordDataset(
        f"{gz}/preference_pairs-train.tfrecord-00000-of-00001", compression_type="GZIP"
    )
    got = [tf.io.parse_single_example(x, records.FEATURE_SPEC) for x in ds]
    assert [g["chosen"].numpy().decode() for g in got] == [p["chosen"] for p in pairs]

    # TFDS, from the dataset_info.json/features.json we wrote by hand.
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(out)
    assert builder.info.splits["train"].num_examples == 5
    got = [
        {k: (v.decode() if isinstance(v, bytes) else float(v)) for k, v in ex.items()}
        for ex in builder.as_dataset(split="train").as_numpy_iterator()
    ]
    assert_same(got, pairs)


def test_gcs_roundtrip_gzip_and_host_sharding(gcs_bucket: str, tmp_path) -> None:
    pairs = make_pairs(7)
    out = f"gs://{gcs_bucket}/runs/pairs"
    meta = write_pairs(pairs, out, num_shards=4, compression="GZIP", metadata={"judge_model": "m"})
    assert meta["compression"] == "GZIP"
    names = [os.path.basename(p) for p in storage.list_files(out)]
    assert "metadata.json" in names and "dataset_info.json" not in names  # TFDS cannot read GZIP shards
    cache = str(tmp_path / "cache")
    parts = [list(read_pairs(out, shard_index=i, shard_count=2, cache_dir=cache)) for i in range(2)]
    ids = [[r["prompt_id"] for r in p] for p in parts]
    assert not set(ids[0]) & set(ids[1])  # each host reads different records ...
    assert_same(parts[0] + parts[1], pairs)  # ... and together they read all of them
    assert len(ids[0]) == 4 and len(ids[1]) == 3  # files 0,2 (2+2 records) and 1,3 (2+1)
    with pytest.raises(RecordError, match=r"4 shard file.*shard_count=8"):
        next(read_pairs(out, shard_index=0, shard_count=8, cache_dir=cache))


def _write_raw(out, examples: list[bytes], tmp_path) -> None:
    """A committed-looking dataset with arbitrary record bytes (to test the reader's errors)."""
    import tensorflow as tf

    os.makedirs(out, exist_ok=True)
    name = records.shard_name("preference_pairs", 0, 1)
    with tf.io.TFRecordWriter(os.path.join(out, name)) as w:
        for e in examples:
            w.write(e)
    meta = {"schema_version": records.SCHEMA_VERSION, "shards": [name], "compression": None}
    (tmp_path / "bad" / "metadata.json").write_text(json.dumps(meta))


def _tf_example(pair: dict):
    """The reference writer: TensorFlow's own tf.train.Example."""
    import tensorflow as tf

    feats = {
        f: tf.train.Feature(bytes_list=tf.train.BytesList(value=[pair[f].encode()]))
        for f in records.BYTES_FIELDS
    }
    for f in FLOAT_FIELDS:
        v = math.nan if pair[f] is None else pair[f]
        feats[f] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
    return tf.train.Example(features=tf.train.Features(feature=feats))


def test_record_missing_field_names_file_record_and_field(tmp_path) -> None:
    """Records written by TensorFlow itself are read; one missing a field is named precisely."""
    good = _tf_example(make_pairs(1)[0])
    bad = _tf_example(make_pairs(1)[0])
    del bad.features.feature["chosen"]
    out = str(tmp_path / "bad")
    _write_raw(out, [good.SerializeToString(), bad.SerializeToString()], tmp_path)
    it = read_pairs(out)
    assert_same([next(it)], make_pairs(1))
    with pytest.raises(
        RecordError,
        match=r"preference_pairs-train\.tfrecord-00000-of-00001: record 1: missing field 'chosen'",
    ):
        next(it)


def test_corrupt_file_and_uncommitted_dataset(tmp_path) -> None:
    out = str(tmp_path / "c")
    write_pairs(make_pairs(3), out)
    shard = os.path.join(out, records.shard_name("preference_pairs", 0, 1))
    with open(shard, "rb") as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF  # flip a byte inside record 1: its CRC no longer matches
    with open(shard, "wb") as f:
        f.write(bytes(data))
    with pytest.raises(RecordError, match=r"tfrecord-00000-of-00001: corrupt data \(sha256"):
        list(read_pairs(out))  # the commit's checksum catches it before any record is yielded
    meta = records.read_metadata(out)
    del meta["sha256"]
    with open(os.path.join(out, "metadata.json"), "w") as f:
        json.dump(meta, f)
    with pytest.raises(RecordError, match=r"tfrecord-00000-of-00001: record 1: corrupt data \(data checksum"):
        list(read_pairs(out))  # without checksums, the TFRecord CRC names the record
    gz = str(tmp_path / "gz")
    write_pairs(make_pairs(3), gz, compression="GZIP")
    shard = os.path.join(gz, records.shard_name("preference_pairs", 0, 1))
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) - 20])  # a truncated upload
    meta = records.read_metadata(gz)
    del meta["sha256"]
    with open(os.path.join(gz, "metadata.json"), "w") as f:
        json.dump(meta, f)
    with pytest.raises(RecordError, match=r"tfrecord-00000-of-00001: record \d: corrupt data"):
        list(read_pairs(gz))
    os.remove(os.path.join(out, "metadata.json"))
    with pytest.raises(RecordError, match="no committed preference dataset"):
        list(read_pairs(out))


def test_writer_rejects_bad_pairs_and_keeps_committed_data(tmp_path) -> None:
    out = str(tmp_path / "w")
    bad = make_pairs(2)
    del bad[1]["rejected"]
    with pytest.raises(RecordError, match="pair 1: missing field 'rejected'"):
        write_pairs(bad, out)
    assert not os.path.exists(os.path.join(out, "metadata.json"))
    nan_reward = make_pairs(1)
    nan_reward[0]["chosen_reward"] = None
    with pytest.raises(RecordError, match="pair 0: field 'chosen_reward'"):
        write_pairs(nan_reward, out)

    m1 = write_pairs(make_pairs(2), out, metadata={"fingerprint": "f1"})
    again = write_pairs(make_pairs(9), out, metadata={"fingerprint": "f1"})  # same input: no-op
    assert again["skipped"] and again["commit_id"] == m1["commit_id"]
    with pytest.raises(records.AlreadyCommittedError, match="--overwrite"):
        write_pairs(make_pairs(3), out, metadata={"fingerprint": "f2"})
    assert len(list(read_pairs(out))) == 2  # the committed dataset is untouched
    with pytest.raises(RecordError, match="pair 1: missing field 'rejected'"):
        write_pairs(bad, out, metadata={"fingerprint": "f3"}, overwrite=True)
    assert len(list(read_pairs(out))) == 2  # bad replacement input is caught before un-committing
    write_pairs(make_pairs(3), out, num_shards=3, metadata={"fingerprint": "f2"}, overwrite=True)
    assert len(list(read_pairs(out))) == 3
    # The old single shard is gone, not lying around for a glob-based reader to pick up.
    assert len([f for f in os.listdir(out) if ".tfrecord-" in f]) == 3


def test_io_and_judge_do_not_import_jax() -> None:
    """`judge` and `lr_jax.io` stay JAX-free, even after writing and reading records (TF is fine)."""
    import subprocess
    import sys

    code = (
        "import sys, tempfile\n"
        "from judge import pairs, traces\n"
        "from lr_jax.io import records\n"
        "d = tempfile.mkdtemp()\n"
        "rows = [dict({f: 'x' for f in records.BYTES_FIELDS}, **{f: 1.0 for f in records.FLOAT_FIELDS})]\n"
        "records.write_pairs(rows, d)\n"
        "assert len(list(records.read_pairs(d))) == 1\n"
        "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'flax', 'optax')))\n"
        "assert not bad, bad\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_files_for_residues_matches_brute_force() -> None:
    """File f holds records r = p * F + f (round-robin writer); brute force over every record index."""
    for n in (0, 5, 13, 40):
        for F in (1, 2, 3, 4, 6, 8, 16):
            lengths = [len(range(f, n, F)) for f in range(F)]
            for B in (1, 2, 4, 8):
                for residues in ({0}, {1, 3} & set(range(B)), set(range(B)), {B - 1}):
                    want = sorted({r % F for r in range(n) if r % B in residues})
                    assert records.files_for_residues(lengths, B, residues) == want, (n, F, B, residues)


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_read_by_residue_is_the_written_records_and_skips_other_files(tmp_path, compression) -> None:
    pairs = make_pairs(23)
    out = str(tmp_path / "ds")
    meta = write_pairs(pairs, out, num_shards=8, compression=compression)
    # Residues {1, 2} mod 4 live in files {1, 2, 5, 6}: the others may vanish without the reader noticing.
    for f in (0, 3, 4, 7):
        os.remove(os.path.join(out, meta["shards"][f]))
    got = sorted(records.read_pairs_by_residue(out, modulus=4, residues=[1, 2]), key=lambda t: t[0])
    assert [r for r, _, _ in got] == [r for r in range(23) if r % 4 in (1, 2)]
    assert_same([p for _, _, p in got], [pairs[r] for r, _, _ in got])
    assert [p["prompt_id"] for _, _, p in got] == [f"p{r}" for r, _, _ in got]  # r is the input position
    assert got[4][0] == 9 and got[4][1] == f"{storage.join(out, meta['shards'][1])}: record 1"  # 9 = 1*8 + 1
    with pytest.raises(RecordError, match="missing"):  # a needed file is gone: a clear error
        list(records.read_pairs_by_residue(out, modulus=4, residues=[0]))


def test_shards_and_metadata_get_the_normal_umask_mode(tmp_path) -> None:
    """Shards and metadata.json were created 0o600 (mkstemp) while every other output was 0o644."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "ds"
        write_pairs(make_pairs(3), str(out), num_shards=2)
        modes = {f: (out / f).stat().st_mode & 0o777 for f in os.listdir(out)}
    finally:
        os.umask(old)
    assert len(modes) == 5 and set(modes.values()) == {0o644}, modes


def test_record_errors_are_lr_jax_errors() -> None:
    from lr_jax.errors import ConfigError, LrJaxError
    from lr_jax.io import jsonl

    assert issubclass(RecordError, LrJaxError) and issubclass(jsonl.JsonlError, LrJaxError)
    with pytest.raises(ConfigError, match="num_shards"):
        write_pairs([], "unused", num_shards=0)
