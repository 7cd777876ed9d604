"""MediaStore tests: content addressing, atomic reuse and path safety."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from studio.gallery import MediaStore


def test_save_bytes_content_hash_and_reuse(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    data = b"hello gallery"
    digest = hashlib.sha256(data).hexdigest()
    rel = store.save_bytes(data, ".PNG")
    assert rel == f"media/{digest[:2]}/{digest}.png"
    assert (tmp_path / rel).read_bytes() == data
    mtime = (tmp_path / rel).stat().st_mtime_ns
    assert store.save_bytes(data, "png") == rel
    assert (tmp_path / rel).stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / rel).parent.iterdir() if p.name.startswith(".tmp")]
    assert store.save_bytes(data, "webp") != rel


@pytest.mark.parametrize("suffix", ["", "p/ng", "../x", "a" * 11, "pn g"])
def test_save_bytes_rejects_bad_suffix(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(ValueError, match="suffix"):
        MediaStore(tmp_path).save_bytes(b"x", suffix)


def test_resolve_inside_root(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    rel = store.save_bytes(b"abc", "bin")
    assert store.resolve(rel) == (tmp_path / rel).resolve()
    assert store.exists(rel)


@pytest.mark.parametrize(
    "rel",
    ["../x", "/etc/passwd", "media/../../x", "", "a\x00b", "C:\\Windows\\x", "..\\x"],
)
def test_resolve_rejects_traversal(tmp_path: Path, rel: str) -> None:
    store = MediaStore(tmp_path / "root")
    with pytest.raises(ValueError):
        store.resolve(rel)
    assert store.exists(rel) is False


def test_resolve_rejects_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "media").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (root / "media" / "link.txt").symlink_to(secret)
    (root / "media" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    store = MediaStore(root)
    with pytest.raises(ValueError, match="outside"):
        store.resolve("media/link.txt")
    with pytest.raises(ValueError, match="outside"):
        store.resolve("media/dirlink/secret.txt")
    with pytest.raises(ValueError):
        store.delete("media/link.txt")
    assert secret.exists()


def test_delete_ignores_missing(tmp_path: Path) -> None:
    store = MediaStore(tmp_path)
    rel = store.save_bytes(b"bye", "bin")
    store.delete(rel)
    assert not (tmp_path / rel).exists()
    store.delete(rel)  # second delete is a no-op
