"""The startup sweep: make the gallery's rows and media files agree again after a crash.

A generation is saved files first, row second (``Gallery._save_media``), so a process killed in between leaves
media files no row references (and, killed inside an atomic write, a ``.tmp-*`` file); a process killed inside
``Gallery.delete`` (row deleted, files not yet) leaves files no row references too. SQLite in WAL mode keeps the
database itself consistent. Files can also vanish behind the studio's back. The sweep removes unreferenced files
that the gallery itself wrote (content-hash names ``media/<aa>/<sha256>.<ext>`` and its temporary files; anything
else in the folder is left alone) and lists rows whose media file is missing (they stay, reported, so nothing a
person made disappears silently). It returns what it did, and the studio prints it.

It runs at every launch, so at a million rows it must not read every row and stat every file each time. The first
sweep (and one a week, or whenever its checkpoint does not fit) is a *full* one: every media folder is listed once
and compared with the distinct paths the rows use (index scans; existence is looked up in the listings, not one
``stat`` per row). It then stores a checkpoint in ``gallery_state``: each media folder's mtime, the rows found
missing, and the rows whose file lies outside the ``media/<folder>/`` layout. A later, *incremental* sweep
re-lists only the folders whose mtime changed (a file added, removed or renamed in a folder changes its mtime;
a folder modified within ``RACY_S`` seconds of being listed is not trusted), reads the rows journaled since (the
``gallery_changes`` triggers note inserted rows and the files of deleted rows), and re-checks the rows missing
before and the rows outside the layout. Together that covers everything a full sweep would find: a save killed
before its row (new files: their folder changed), a delete killed before its files (journaled paths), files
removed or added by hand (their folder changed), rows added with a missing file (journaled ids).
"""
from __future__ import annotations

import os
import posixpath
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from .models import GalleryChange, GalleryState, Generation
from .store import MEDIA_DIR

_HASHED = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.[a-z0-9]{1,10}$")
STATE_NAME = "sweep"
STATE_VERSION = 1
FULL_EVERY_S = 7 * 24 * 3600  # a full sweep at least this often, whatever the checkpoint says
RACY_S = 2.0  # a folder modified this recently when listed may change again within the same mtime tick
JOURNAL_LIMIT = 200_000  # more journaled changes than this: a full sweep is cheaper
RANGE_DIRS = 48  # up to this many changed folders: their rows are read by index ranges (SQLite), else in bulk
_CHUNK = 500
_PATHS = (Generation.media_path, Generation.thumb_path, Generation.trajectory_path)


@dataclass
class SweepReport:
    removed_files: list[str] = field(default_factory=list)     # unreferenced gallery files, deleted
    removed_temp: list[str] = field(default_factory=list)      # interrupted atomic writes, deleted
    missing_media: list[int] = field(default_factory=list)     # rows whose media file is gone (kept)
    mode: str = "full"                                         # "full" or "incremental"
    listed_dirs: int = 0                                       # media folders listed

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


@dataclass
class _Listing:
    """One media folder as listed: its mtime just before, regular files, symlinks and sub-folders."""

    mtime_ns: int
    files: set[str]
    links: set[str]
    subdirs: list[str]
    touched: bool = False  # the sweep removed something here or left a young file: not a checkpoint


_UNREADABLE = _Listing(0, set(), set(), [])


def _list(path: Path) -> _Listing | None:
    """List ``path`` (None when it is not a folder any more; ``_UNREADABLE`` when it cannot be listed)."""
    try:
        mtime = os.stat(path).st_mtime_ns
        files, links, subdirs = set(), set(), []
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_symlink():
                    links.add(entry.name)
                elif entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                elif entry.is_file(follow_symlinks=False):
                    files.add(entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:
        return _UNREADABLE
    return _Listing(mtime, files, links, subdirs)


class _Sweep:
    """One run of the sweep over ``gallery``."""

    def __init__(self, gallery: Any, min_age_s: float) -> None:
        self.gallery = gallery
        self.root = Path(gallery.root)
        self.media_root: Path = gallery.store.media_root
        self.min_age_s = min_age_s
        self.now = time.time()
        self.report = SweepReport()
        self.listings: dict[str, _Listing] = {}  # rel folder ("media", "media/ab") -> listing
        self.gone: set[str] = set()  # checkpointed folders that no longer exist
        self.dialect = gallery.engine.dialect.name

    # -- database ---------------------------------------------------------------------------------
    def _scalars(self, stmt: Any) -> list[Any]:
        with self.gallery.session() as session:
            return list(session.scalars(stmt))

    def _rows(self, stmt: Any) -> list[Any]:
        with self.gallery.session() as session:
            return list(session.execute(stmt).all())

    def _ids_using(self, media_paths: Iterable[str]) -> list[int]:
        """Ids of rows whose media file is one of ``media_paths``."""
        paths, ids = sorted(set(media_paths)), []
        for k in range(0, len(paths), _CHUNK):
            ids += self._scalars(select(Generation.id).where(Generation.media_path.in_(paths[k:k + _CHUNK])))
        return ids

    def _referenced_in(self, folders: list[str], bulk: bool) -> tuple[set[str], set[str]]:
        """(every path any row uses, the media paths) inside ``folders``: by index ranges, or all distinct ones."""
        if bulk:
            media = {p for p in self._scalars(select(Generation.media_path).distinct()) if p}
            others = {p for col in _PATHS[1:] for p in self._scalars(select(col).distinct()) if p}
            return media | others, media
        refs: set[str] = set()
        media: set[str] = set()
        for folder in folders:  # binary collation: 'folder/' <= path < 'folder0' is everything under folder/
            lo, hi = folder + "/", folder + "0"
            for col in _PATHS:
                found = self._scalars(select(col).where(col >= lo, col < hi).distinct())
                refs.update(found)
                if col is Generation.media_path:
                    media.update(found)
        return refs, media

    # -- files ------------------------------------------------------------------------------------
    def _young(self, path: Path) -> bool:
        """Too new to remove (a save may be in flight in another process)."""
        if self.min_age_s <= 0:
            return False
        try:
            return self.now - path.stat().st_mtime < self.min_age_s
        except OSError:
            return True

    def _exists(self, rel: str) -> bool:
        """Whether the media file ``rel`` exists, from the listings where its folder was listed."""
        folder, name = posixpath.split(rel)
        listing = self.listings.get(folder)
        if listing is None:
            return self.gallery.store.exists(rel)
        return name in listing.files or (name in listing.links and self.gallery.store.exists(rel))

    def _walk(self, folders: Iterable[str], known: dict[str, int | None] | None = None) -> None:
        """List ``folders`` and every sub-folder not in ``known`` (a checkpoint), recursively."""
        todo = list(folders)
        while todo:
            rel = todo.pop()
            if rel in self.listings:
                continue
            listing = _list(self.root / rel)
            if listing is None:
                self.gone.add(rel)
                continue
            if listing is _UNREADABLE:  # its rows are checked one by one; it is looked at again next time
                continue
            self.listings[rel] = listing
            todo += [f"{rel}/{name}" for name in listing.subdirs if known is None or f"{rel}/{name}" not in known]

    def _clean_listed(self, refs: set[str]) -> None:
        """Remove temporary files and unreferenced gallery files in the listed folders."""
        prefix = MEDIA_DIR + "/"
        for folder in sorted(self.listings):
            listing = self.listings[folder]
            for name in sorted(listing.files):
                rel = f"{folder}/{name}"
                in_media = rel[len(prefix):]
                is_temp = name.startswith(".tmp-")
                if not is_temp and not (_HASHED.match(in_media) and rel not in refs):
                    continue
                path = self.root / rel
                listing.touched = True
                if self._young(path):
                    continue
                path.unlink(missing_ok=True)
                listing.files.discard(name)
                (self.report.removed_temp if is_temp else self.report.removed_files).append(in_media)

    # -- the two kinds of sweep -------------------------------------------------------------------
    def full(self, seq: int) -> dict[str, Any]:
        self.report.mode = "full"
        if self.media_root.is_dir():
            self._walk([MEDIA_DIR])
        refs, media = self._referenced_in([], bulk=True)
        self._clean_listed(refs)
        odd_paths = {p for p in media if posixpath.dirname(p) not in self.listings or posixpath.dirname(p) == MEDIA_DIR}
        missing = [p for p in media if not self._exists(p)]
        self.report.missing_media = sorted(self._ids_using(missing))
        return self._checkpoint({}, seq, self._ids_using(odd_paths))

    def incremental(self, state: dict[str, Any], seq: int, journal: list[Any]) -> dict[str, Any]:
        self.report.mode = "incremental"
        known: dict[str, int | None] = state["dirs"]
        changed = []
        for rel, mtime in known.items():
            try:
                now_mtime = os.stat(self.root / rel).st_mtime_ns
            except OSError:
                self.gone.add(rel)
                continue
            if mtime is None or now_mtime != mtime:
                changed.append(rel)
        if MEDIA_DIR not in known and self.media_root.is_dir():
            changed.append(MEDIA_DIR)
        self._walk(changed, known)
        # Rows directly in media/ are "odd" (checked one by one); a range over media/ would be every row.
        looked = sorted((set(self.listings) | self.gone) - {MEDIA_DIR})
        bulk = self.dialect != "sqlite" or len(looked) > RANGE_DIRS
        refs, media = self._referenced_in(looked, bulk)
        if bulk:  # keep what lies in the folders looked at
            media = {p for p in media if posixpath.dirname(p) in self.listings or posixpath.dirname(p) in self.gone}
        self._clean_listed(refs)
        handled = set(looked)
        missing_ids = set(self._ids_using(p for p in media if posixpath.dirname(p) in handled and not self._exists(p)))

        deleted_paths = {p for change in journal if change.op == "d"
                         for p in (change.media_path, change.thumb_path, change.trajectory_path) if p}
        self._remove_orphans(p for p in deleted_paths if posixpath.dirname(p) not in handled)

        recheck = {change.gen_id for change in journal if change.op == "i"}
        recheck.update(state.get("missing", []), state.get("odd", []))
        odd: list[int] = []
        ordered = sorted(recheck)
        for k in range(0, len(ordered), _CHUNK):
            batch = ordered[k:k + _CHUNK]
            for gen_id, media_path in self._rows(select(Generation.id, Generation.media_path)
                                                 .where(Generation.id.in_(batch))):
                folder = posixpath.dirname(media_path)
                if folder in handled:
                    continue  # its folder was listed above
                if folder not in known or folder == MEDIA_DIR:
                    odd.append(gen_id)
                if not self._exists(media_path):
                    missing_ids.add(gen_id)
        self.report.missing_media = sorted(missing_ids)
        return self._checkpoint(known, seq, odd)

    def _remove_orphans(self, paths: Iterable[str]) -> None:
        """Remove the gallery files among ``paths`` (of deleted rows) that no row uses any more."""
        prefix = MEDIA_DIR + "/"
        for rel in sorted(set(paths)):
            in_media = rel[len(prefix):] if rel.startswith(prefix) else rel
            if not rel.startswith(prefix) or not _HASHED.match(in_media):
                continue
            path = self.root / rel
            if path.is_symlink() or not path.is_file():
                continue
            with self.gallery.session() as session:
                used = session.scalar(select(func.count()).select_from(Generation).where(
                    (Generation.media_path == rel) | (Generation.thumb_path == rel)
                    | (Generation.trajectory_path == rel)))
            if used or self._young(path):
                continue
            path.unlink(missing_ok=True)
            self.report.removed_files.append(in_media)

    def _checkpoint(self, known: dict[str, int | None], seq: int, odd: list[int]) -> dict[str, Any]:
        """The state after this sweep: listed folders' mtimes (None: look again next time)."""
        dirs = {rel: mtime for rel, mtime in known.items()
                if rel not in self.gone and not any(rel.startswith(g + "/") for g in self.gone)}
        racy_ns = int((self.now - RACY_S) * 1e9)
        for rel, listing in self.listings.items():
            trusted = not listing.touched and listing.mtime_ns < racy_ns
            dirs[rel] = listing.mtime_ns if trusted else None
        self.report.listed_dirs = len(self.listings)
        self.report.removed_files.sort()
        self.report.removed_temp.sort()
        return {"version": STATE_VERSION, "root": str(self.root.resolve()), "seq": seq, "dirs": dirs,
                "missing": self.report.missing_media, "odd": sorted(set(odd))}


def _journaled(gallery: Any) -> bool:
    """Whether triggers keep ``gallery_changes`` (the 0004 migration creates them on these databases)."""
    return gallery.engine.dialect.name in ("sqlite", "postgresql")


def sweep(gallery: Any, min_age_s: float = 0.0, full: bool | None = None) -> SweepReport:
    """Reconcile ``gallery``'s rows and files (files younger than ``min_age_s`` seconds are left: a save may be
    in flight in another process). ``full``: True forces a full sweep, False an incremental one where a
    checkpoint allows, None (the default) chooses."""
    run = _Sweep(gallery, min_age_s)
    journal: list[Any] = []
    with gallery.session() as session:
        saved = session.get(GalleryState, STATE_NAME)
        state = dict(saved.value) if saved is not None else None
        # Journal entries up to ``seq`` are this sweep's (seq only grows: AUTOINCREMENT / a sequence).
        seq = max(int(session.scalar(select(func.max(GalleryChange.seq))) or 0), int((state or {}).get("seq", 0)))
        usable = (state is not None and full is not True and _journaled(gallery)
                  and state.get("version") == STATE_VERSION and state.get("root") == str(run.root.resolve())
                  and run.now - float(state.get("full_at", 0)) < FULL_EVERY_S)
        if usable:
            pending = session.scalar(select(func.count()).select_from(GalleryChange).where(GalleryChange.seq <= seq))
            usable = int(pending or 0) <= JOURNAL_LIMIT
        if usable:
            journal = list(session.execute(
                select(GalleryChange.gen_id, GalleryChange.op, *(getattr(GalleryChange, c.key) for c in _PATHS))
                .where(GalleryChange.seq <= seq)).all())
    if usable:
        new_state = run.incremental(state, seq, journal)
        new_state["full_at"] = state["full_at"]
    else:
        new_state = run.full(seq)
        new_state["full_at"] = run.now
    with gallery.session() as session:
        session.execute(delete(GalleryChange).where(GalleryChange.seq <= seq))
        if _journaled(gallery):
            saved = session.get(GalleryState, STATE_NAME)
            if saved is None:
                session.add(GalleryState(name=STATE_NAME, value=new_state))
            elif int(saved.value.get("seq", 0)) <= seq:  # another process may have swept past us meanwhile
                saved.value = new_state
    return run.report
