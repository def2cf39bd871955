"""lr_jax.io.storage against the local filesystem and a real GCS emulator (fake-gcs-server)."""

from __future__ import annotations

import os

import pytest

from lr_jax.io import storage


def _roundtrip(root: str, tmp_path) -> None:
    f = storage.join(root, "a", "x.bin")
    storage.makedirs(storage.join(root, "a"))
    assert not storage.exists(f)
    storage.write_bytes(f, b"\x00\x01hello")
    assert storage.exists(f)
    assert storage.read_bytes(f) == b"\x00\x01hello"
    storage.write_text(storage.join(root, "a", "y.txt"), "héllo")
    assert storage.read_text(storage.join(root, "a", "y.txt")) == "héllo"
    storage.write_text(storage.join(root, "a", "sub", "z.txt"), "z")
    storage.write_text(storage.join(root, "ab.txt"), "not under a/")
    # Directory listing is recursive and does not leak the sibling "ab.txt" in via the name prefix.
    got = storage.list_files(storage.join(root, "a"))
    assert got == sorted(got)
    assert sorted(os.path.basename(p) for p in got) == ["x.bin", "y.txt", "z.txt"]
    txt = storage.list_files(storage.join(root, "a"), "*.txt")
    assert sorted(os.path.basename(p) for p in txt) == ["y.txt", "z.txt"]
    assert storage.exists(storage.join(root, "a"))
    # Overwrite is allowed by default, refused with if_absent.
    storage.write_bytes(f, b"v2")
    assert storage.read_bytes(f) == b"v2"
    with pytest.raises(FileExistsError, match="already exists"):
        storage.write_bytes(f, b"v3", if_absent=True)
    assert storage.read_bytes(f) == b"v2"
    # upload / download
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload" * 1000)
    remote = storage.join(root, "up", "src.bin")
    storage.upload_file(str(src), remote)
    dst = tmp_path / "dl" / "dst.bin"
    storage.download_file(remote, str(dst))
    assert dst.read_bytes() == b"payload" * 1000
    with pytest.raises(FileExistsError):
        storage.upload_file(str(src), remote, if_absent=True)
    with pytest.raises(FileNotFoundError, match=r"missing\.bin"):
        storage.read_bytes(storage.join(root, "missing.bin"))
    storage.delete(remote)
    assert not storage.exists(remote)
    storage.delete(remote)  # missing_ok


def test_local_roundtrip(tmp_path) -> None:
    _roundtrip(str(tmp_path / "root"), tmp_path)
    # No temp files left behind by the atomic writes.
    assert not [p for p in storage.list_files(str(tmp_path / "root")) if ".tmp-" in p]


def test_gcs_roundtrip(gcs_bucket: str, tmp_path) -> None:
    assert storage.is_gcs(f"gs://{gcs_bucket}/x") and not storage.is_gcs(str(tmp_path))
    _roundtrip(f"gs://{gcs_bucket}/root", tmp_path)
    assert storage.list_files(f"gs://{gcs_bucket}/root/a/x") == [f"gs://{gcs_bucket}/root/a/x.bin"]


def test_gcs_create_only_is_412_from_the_server(gcs_bucket: str) -> None:
    """The precondition is enforced by the emulator (HTTP 412), not by a client-side exists() check."""
    from google.api_core.exceptions import PreconditionFailed

    path = f"gs://{gcs_bucket}/commit.json"
    storage.write_bytes(path, b"first", if_absent=True)
    with pytest.raises(FileExistsError) as ei:
        storage.write_bytes(path, b"second", if_absent=True)
    assert isinstance(ei.value.__cause__, PreconditionFailed)
    assert storage.read_bytes(path) == b"first"


def test_join() -> None:
    assert storage.join("gs://b/x/", "y", "/z/") == "gs://b/x/y/z"
    assert storage.join("/a", "b") == os.path.join("/a", "b")
    with pytest.raises(ValueError, match="bucket"):
        storage.read_bytes("gs:///nobucket")


def test_emulator_survives_many_requests(gcs_bucket: str) -> None:
    """Regression: the emulator's undrained stderr pipe fills after ~370 requests and the server hangs."""
    path = f"gs://{gcs_bucket}/many"
    storage.write_bytes(path, b"x")
    for _ in range(450):
        assert storage.read_bytes(path) == b"x"


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_local_writes_get_the_normal_umask_mode(tmp_path, umask: int) -> None:
    """Atomic writes go through a mkstemp temp file (0o600); the finished file must have open()'s mode."""
    old = os.umask(umask)
    try:
        want = 0o666 & ~umask
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what every other output gets
        assert plain.stat().st_mode & 0o777 == want
        storage.write_bytes(str(tmp_path / "a.bin"), b"a")
        storage.write_text(str(tmp_path / "b.txt"), "b", if_absent=True)  # create-only: os.link of the temp
        storage.upload_file(str(plain), str(tmp_path / "up" / "c.txt"))
        storage.download_file(str(plain), str(tmp_path / "dl" / "d.txt"))
        for name in ("a.bin", "b.txt", "up/c.txt", "dl/d.txt"):
            assert (tmp_path / name).stat().st_mode & 0o777 == want, name
    finally:
        os.umask(old)


def test_user_errors_are_lr_jax_errors(tmp_path) -> None:
    from lr_jax.errors import LrJaxError

    with pytest.raises(storage.StoragePathError) as e1:
        storage.read_bytes("gs:///nobucket")
    with pytest.raises(storage.NotFoundError) as e2:
        storage.read_bytes(str(tmp_path / "missing.bin"))
    storage.write_bytes(str(tmp_path / "x"), b"1")
    with pytest.raises(storage.AlreadyExistsError) as e3:
        storage.write_bytes(str(tmp_path / "x"), b"2", if_absent=True)
    for e in (e1, e2, e3):
        assert isinstance(e.value, LrJaxError) and isinstance(e.value, storage.StorageError)
    # still the built-in types callers catch
    assert isinstance(e1.value, ValueError) and isinstance(e2.value, FileNotFoundError)
    assert isinstance(e3.value, FileExistsError)


def test_missing_credentials_and_missing_bucket_are_user_errors(gcs_bucket: str, monkeypatch) -> None:
    assert not storage.exists(f"gs://{gcs_bucket}-missing/x")  # a missing bucket holds nothing
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    monkeypatch.setattr(storage, "_clients", {})
    with pytest.raises(storage.StorageError, match=r"^gs://: no Google Cloud credentials \(.*key\.json"):
        storage.exists("gs://bucket/x")
