"""Content-addressed media file storage under a gallery root folder."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path, PurePosixPath, PureWindowsPath

MEDIA_DIR = "media"
_SUFFIX_RE = re.compile(r"^[A-Za-z0-9]{1,10}$")


def _clean_suffix(suffix: str) -> str:
    """Validate a file suffix such as ``"png"`` or ``".webp"``; return it lower-cased."""
    cleaned = suffix.lstrip(".")
    if not _SUFFIX_RE.match(cleaned):
        raise ValueError(
            f"Invalid file suffix {suffix!r}: use 1-10 letters or digits, e.g. 'png'."
        )
    return cleaned.lower()


class MediaStore:
    """Stores media files as ``media/<aa>/<sha256>.<suffix>`` below ``root``.

    Identical content maps to the same file, so a file may be shared by
    several gallery rows; callers decide when a file is unreferenced.
    """

    def __init__(self, root: Path) -> None:
        """Create a store rooted at ``root`` (the folder is not created here)."""
        self.root = Path(root)

    @property
    def media_root(self) -> Path:
        """Folder that holds all media shards."""
        return self.root / MEDIA_DIR

    @staticmethod
    def relative_path(data: bytes, suffix: str) -> str:
        """Content-hash relative path ``media/<aa>/<sha256>.<suffix>`` for ``data``."""
        digest = hashlib.sha256(data).hexdigest()
        return f"{MEDIA_DIR}/{digest[:2]}/{digest}.{_clean_suffix(suffix)}"

    def save_bytes(self, data: bytes, suffix: str) -> str:
        """Write ``data`` atomically and return its relative POSIX path.

        If a file with the same content hash already exists it is reused.
        """
        rel = self.relative_path(data, suffix)
        target = self.root / rel
        if target.is_file() and target.stat().st_size == len(data):
            return rel
        target.parent.mkdir(parents=True, exist_ok=True)
        self._atomic_write(target, data)
        return rel

    @staticmethod
    def _atomic_write(target: Path, data: bytes) -> None:
        """Write to a temp file in the target folder, then ``os.replace`` it."""
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def resolve(self, rel: str) -> Path:
        """Return the absolute path of ``rel`` if it lies inside the root.

        Raises ``ValueError`` for absolute paths, ``..`` components, NUL bytes
        or symlinks that lead outside the gallery root.
        """
        if not isinstance(rel, str) or not rel.strip():
            raise ValueError("Media path must be a non-empty relative path.")
        if "\x00" in rel:
            raise ValueError(f"Media path {rel!r} contains a NUL byte.")
        posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
        if posix.is_absolute() or windows.is_absolute() or windows.drive:
            raise ValueError(f"Media path {rel!r} must be relative to the gallery root.")
        if ".." in posix.parts or ".." in windows.parts:
            raise ValueError(f"Media path {rel!r} must not contain '..'.")
        root = self.root.resolve()
        candidate = (root / posix).resolve()
        if candidate != root and root not in candidate.parents:
            raise ValueError(f"Media path {rel!r} points outside the gallery root {root}.")
        return candidate

    def resolve_listed(self, rel: str) -> Path:
        """Fast, lexical form of :meth:`resolve` for paths the gallery wrote itself (bulk listings):
        the same refusals of absolute paths and ``..``, without a filesystem call per path."""
        posix, windows = PurePosixPath(rel), PureWindowsPath(rel)
        if not rel or "\x00" in rel or posix.is_absolute() or windows.is_absolute() or windows.drive \
                or ".." in posix.parts or ".." in windows.parts:
            raise ValueError(f"Media path {rel!r} must be relative to the gallery root.")
        return self.root / posix

    def delete(self, rel: str) -> None:
        """Remove the file at ``rel``; a missing file is ignored."""
        self.resolve(rel).unlink(missing_ok=True)

    def exists(self, rel: str) -> bool:
        """Return True if ``rel`` names an existing file inside the root."""
        try:
            return self.resolve(rel).is_file()
        except ValueError:
            return False
