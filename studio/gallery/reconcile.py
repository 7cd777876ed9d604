"""The startup sweep: make the gallery's rows and media files agree again after a crash.

A generation is saved files first, row second (``Gallery._save_media``), so a process killed in between leaves
media files no row references (and, killed inside an atomic write, a ``.tmp-*`` file); SQLite in WAL mode
keeps the database itself consistent. Files can also vanish behind the studio's back. The sweep removes
unreferenced files that the gallery itself wrote (content-hash names ``media/<aa>/<sha256>.<ext>`` and its
temporary files; anything else in the folder is left alone) and lists rows whose media file is missing (they stay,
reported, so nothing a person made disappears silently). It returns what it did, and the studio prints it.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .models import Generation

_HASHED = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]{1,10}$")


@dataclass
class SweepReport:
    removed_files: list[str] = field(default_factory=list)     # unreferenced gallery files, deleted
    removed_temp: list[str] = field(default_factory=list)      # interrupted atomic writes, deleted
    missing_media: list[int] = field(default_factory=list)     # rows whose media file is gone (kept)

    @property
    def clean(self) -> bool:
        return not (self.removed_files or self.removed_temp or self.missing_media)

    def summary(self) -> str:
        if self.clean:
            return "gallery check: rows and files agree"
        parts = []
        if self.removed_files:
            parts.append(f"removed {len(self.removed_files)} media file(s) no row referenced (left by an interrupted save)")
        if self.removed_temp:
            parts.append(f"removed {len(self.removed_temp)} unfinished temporary file(s)")
        if self.missing_media:
            shown = ", ".join(f"#{i}" for i in self.missing_media[:10])
            more = "" if len(self.missing_media) <= 10 else f" and {len(self.missing_media) - 10} more"
            parts.append(f"{len(self.missing_media)} row(s) whose media file is missing ({shown}{more}; kept, "
                         "shown as missing)")
        return "gallery check: " + "; ".join(parts)


def sweep(gallery: Any, min_age_s: float = 0.0) -> SweepReport:
    """Reconcile ``gallery``'s rows and files (files younger than ``min_age_s`` seconds are left: a save may be
    in flight in another process)."""
    report = SweepReport()
    media_root: Path = gallery.store.media_root
    with gallery.session() as session:
        rows = session.execute(select(Generation.id, Generation.media_path, Generation.thumb_path,
                                      Generation.trajectory_path)).all()
    referenced = {p for r in rows for p in r[1:] if p}
    now = time.time()
    if media_root.is_dir():
        for path in sorted(media_root.rglob("*")):
            if path.is_symlink() or not path.is_file():
                continue
            try:
                if now - path.stat().st_mtime < min_age_s:
                    continue
            except OSError:
                continue
            rel = path.relative_to(media_root).as_posix()
            if path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)
                report.removed_temp.append(rel)
            elif _HASHED.match(rel) and f"{media_root.name}/{rel}" not in referenced:
                path.unlink(missing_ok=True)
                report.removed_files.append(rel)
    for gen_id, media_path, *_ in rows:
        if not gallery.store.exists(media_path):
            report.missing_media.append(int(gen_id))
    return report
