"""Back up and restore a gallery: ``python -m studio.gallery.backup export|import``.

``export --gallery-dir DIR OUT`` writes a folder any tool can read: ``generations.jsonl``, ``groups.jsonl`` and
``prompts.jsonl`` (one row per line, every column, dates as ISO 8601 with their time zone) plus ``media/`` (the
files those rows reference, same relative paths) and ``manifest.json`` (counts, format version). ``import
--gallery-dir NEW IN`` loads such a folder into an empty gallery (any SQLAlchemy URL with ``--db-url``), ids
included so groups keep their members; it checks every file first and refuses, saying why, to import into a
gallery that already has rows or from an export with a missing file. The embedding caches are not exported (the
Embedding Map recomputes them).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import DateTime, select

from .models import Generation, GenerationGroup, PromptHistory, UTCDateTime
from .service import Gallery, GalleryError

FORMAT = 1
TABLES = (("generations.jsonl", Generation), ("groups.jsonl", GenerationGroup), ("prompts.jsonl", PromptHistory))
PATH_COLUMNS = ("media_path", "thumb_path", "trajectory_path")


class BackupError(ValueError):
    """An export or import that cannot be done, with the reason."""


def _is_datetime(column: Any) -> bool:
    return isinstance(column.type, (UTCDateTime, DateTime))


def _encode(row: Any) -> dict[str, Any]:
    out = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _decode(model: Any, record: dict[str, Any]) -> dict[str, Any]:
    columns = {c.key: c for c in model.__table__.columns}
    unknown = sorted(set(record) - set(columns))
    if unknown:
        raise BackupError(f"{model.__tablename__}: unknown field(s) {', '.join(unknown)} (an export of a newer "
                          "studio?)")
    return {k: datetime.fromisoformat(v) if v is not None and _is_datetime(columns[k]) else v
            for k, v in record.items()}


def export_gallery(gallery: Gallery, out: Path) -> dict[str, int]:
    """Write the gallery to the new folder ``out``; returns the counts."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} exists and is not empty; export into a new folder.")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    counts: dict[str, int] = {}
    copied = 0
    with gallery.session() as session:
        for filename, model in TABLES:
            rows = session.scalars(select(model).order_by(model.id)).all()
            with (tmp / filename).open("w", encoding="utf-8") as f:
                for row in rows:
                    record = _encode(row)
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    for col in PATH_COLUMNS if model is Generation else ():
                        rel = record.get(col)
                        if rel and not (tmp / rel).exists():
                            src = gallery.store.resolve(rel)
                            if src.is_file():
                                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                                shutil.copy2(src, tmp / rel)
                                copied += 1
            counts[model.__tablename__] = len(rows)
    counts["files"] = copied
    (tmp / "manifest.json").write_text(json.dumps({"format": FORMAT, "counts": counts}, indent=2))
    if out.exists():
        out.rmdir()
    tmp.replace(out)
    return counts


def _records(path: Path) -> Iterable[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise BackupError(f"{path.name}, line {number}: not JSON ({exc})") from None


def import_gallery(gallery: Gallery, src: Path) -> dict[str, int]:
    """Load the export folder ``src`` into the empty ``gallery``; returns the counts."""
    src = Path(src)
    manifest_path = src / "manifest.json"
    if not manifest_path.is_file():
        raise BackupError(f"{src} is not a gallery export (no manifest.json).")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{src}: export format {manifest.get('format')!r}, this studio reads {FORMAT}.")
    if gallery.count() or gallery.groups(limit=1):
        raise BackupError("the target gallery is not empty; import into a new --gallery-dir.")
    data = {model: [_decode(model, r) for r in _records(src / filename)] for filename, model in TABLES}
    files = sorted({r[c] for r in data[Generation] for c in PATH_COLUMNS if r.get(c)})
    missing = [rel for rel in files if not (src / rel).is_file()]
    if missing:
        raise BackupError(f"the export lacks {len(missing)} media file(s), e.g. {missing[0]}; nothing imported.")
    for rel in files:
        gallery.store.resolve(rel)  # a path outside the gallery root is refused before anything is written
    copied: list[Path] = []
    try:
        for rel in files:
            target = gallery.store.resolve(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, target)
            copied.append(target)
        with gallery.session() as session:  # one transaction: all rows or none
            for model in (GenerationGroup, Generation, PromptHistory):
                session.add_all(model(**record) for record in data[model])
    except BaseException:
        for target in copied:  # the gallery was empty: nothing else used these files
            target.unlink(missing_ok=True)
        raise
    return {model.__tablename__: len(data[model]) for _, model in TABLES} | {"files": len(files)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m studio.gallery.backup", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_text in (("export", "write the gallery to a new folder"),
                            ("import", "load an export folder into an empty gallery")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--gallery-dir", type=Path, default=Path("gallery"))
        p.add_argument("--db-url", default=None)
        p.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        with Gallery.open(args.gallery_dir, args.db_url) as gallery:
            counts = (export_gallery if args.cmd == "export" else import_gallery)(gallery, args.folder)
    except (BackupError, GalleryError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.cmd}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
