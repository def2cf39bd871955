"""`lr_jax.io.outputs`: every kind of bad output path is one line naming the flag and the path, before any
work, and nothing is created by the check (local paths and a real GCS emulator)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lr_jax.errors import LrJaxError
from lr_jax.io import storage
from lr_jax.io.outputs import OutputPathError, check_output_dir, check_output_file

UNWRITABLE = "/proc/self/lr_jax_out"  # no process can create a file here, root included


def _tree(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("keep")
    (tmp_path / "a_dir").mkdir()
    return tmp_path


@pytest.mark.parametrize("rel, want", [
    ("a_file", "is a file, not a directory"),
    ("a_file/sub", "a_file is a file, so the directory cannot be created"),
    ("a_file/sub/deeper", "a_file is a file, so the directory cannot be created"),
])
def test_dir_of_the_wrong_kind(tmp_path: Path, rel: str, want: str) -> None:
    out = _tree(tmp_path) / rel
    with pytest.raises(OutputPathError, match=want) as e:
        check_output_dir(str(out), "--out")
    assert str(e.value).startswith(f"--out {out}: ") and "\n" not in str(e.value)
    assert (tmp_path / "a_file").read_text() == "keep"


def test_dir_that_is_fine_is_not_created(tmp_path: Path) -> None:
    _tree(tmp_path)
    for rel in ("a_dir", "new", "new/deeper", "a_dir/new"):
        check_output_dir(str(tmp_path / rel), "--out")
    assert sorted(os.listdir(tmp_path)) == ["a_dir", "a_file"] and os.listdir(tmp_path / "a_dir") == []


def test_unwritable_dir_and_file(tmp_path: Path) -> None:
    # the wording of judge/outdir.py's check, so that it can be folded in unchanged
    with pytest.raises(OutputPathError, match=rf"^--out {UNWRITABLE}: parent directory /proc/self is not "
                                              r"writable \(No such file or directory\)$"):
        check_output_dir(UNWRITABLE, "--out")
    with pytest.raises(OutputPathError, match=r"^--out /proc/self/x\.jsonl: parent directory /proc/self is"):
        check_output_file("/proc/self/x.jsonl", "--out")
    with pytest.raises(OutputPathError, match=r"^--out /proc/self: directory is not writable"):
        check_output_dir("/proc/self", "--out")
    if os.geteuid() != 0:  # root ignores permissions (the /proc cases cover root)
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(OutputPathError, match="not writable"):
            check_output_dir(str(ro / "new"), "--out")


@pytest.mark.parametrize("rel, want", [
    ("a_dir", "is a directory, not a file"),
    ("a_file/x.jsonl", "a_file is a file, so the directory cannot be created"),
])
def test_file_of_the_wrong_kind(tmp_path: Path, rel: str, want: str) -> None:
    out = _tree(tmp_path) / rel
    with pytest.raises(OutputPathError, match=want) as e:
        check_output_file(str(out), "--out")
    assert str(e.value).startswith(f"--out {out}: ")


def test_file_that_is_an_input_or_fine(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(OutputPathError, match="is the --prompts file; write to a new file"):
        check_output_file(str(tmp_path / "a_dir" / ".." / "a_file"), "--out",
                          inputs={"--prompts": str(tmp_path / "a_file")})
    check_output_file(str(tmp_path / "a_file"), "--out", inputs={"--prompts": str(tmp_path / "nope")})
    check_output_file(str(tmp_path / "new" / "x.jsonl"), "--out")
    assert not (tmp_path / "new").exists() and (tmp_path / "a_file").read_text() == "keep"


@pytest.mark.parametrize("path, want", [
    ("", "--out: empty path"),
    ("gs://b/x", "must be a local path"),
    ("s3://b/x", "only local paths and gs:// URLs"),
])
def test_paths_that_are_not_usable_here(path: str, want: str) -> None:
    with pytest.raises(OutputPathError, match=want):
        check_output_dir(path, "--out", local_only=path.startswith("gs:"))


def test_callers_keep_their_own_error_class() -> None:
    class MyError(LrJaxError):
        pass

    with pytest.raises(MyError, match=r"^--out: empty path$"):
        check_output_file("", "--out", error=MyError)
    assert issubclass(OutputPathError, LrJaxError) and issubclass(OutputPathError, ValueError)


def test_gcs_missing_bucket_and_wrong_kind(gcs_bucket: str) -> None:
    root = f"gs://{gcs_bucket}"
    check_output_dir(f"{root}/run", "--out")  # an existing bucket: fine, and the probe is gone
    check_output_file(f"{root}/run/s.jsonl", "--out")
    assert storage.list_files(root) == []
    with pytest.raises(OutputPathError, match=r"^--out gs://no-such-bkt-x/run: bucket gs://no-such-bkt-x "
                                              r"does not exist$"):
        check_output_dir("gs://no-such-bkt-x/run", "--out")
    with pytest.raises(OutputPathError, match="bucket gs://no-such-bkt-x does not exist"):
        check_output_file("gs://no-such-bkt-x/s.jsonl", "--out")
    storage.write_text(f"{root}/obj", "x")
    storage.write_text(f"{root}/d/inner.jsonl", "x")
    with pytest.raises(OutputPathError, match="is an object \\(a file\\), not a directory"):
        check_output_dir(f"{root}/obj", "--out")
    with pytest.raises(OutputPathError, match="it is a directory, not a file"):
        check_output_file(f"{root}/d", "--out")
    with pytest.raises(OutputPathError, match="needs an object name"):
        check_output_file(root, "--out")
