"""High-level gallery facade: database + media files kept consistent."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image, features
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from studio.gallery import repository as repo
from studio.gallery.groups import GroupsMixin, json_safe
from studio.gallery.migrate import upgrade_to_head
from studio.gallery.models import Generation, PromptHistory
from studio.gallery.pnginfo import encode_png
from studio.gallery.query import GalleryQuery
from studio.gallery.store import MEDIA_DIR, MediaStore

log = logging.getLogger(__name__)

THUMB_SIZE = 256
PATH_FIELDS = ("media_path", "thumb_path", "trajectory_path")
# Generation column <- params key, used when ``fields`` leaves a column out.
_FROM_PARAMS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "steps": "num_inference_steps",
    "guidance": "guidance_scale",
    "scheduler": "scheduler",
    "width": "width",
    "height": "height",
    "model_id": "model_id",
}


class GalleryError(Exception):
    """The gallery cannot be opened or used; the message is meant for the user."""


def _check_writable(root: Path) -> None:
    """Create ``root``/media and a probe file; raise GalleryError if that fails."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MEDIA_DIR).mkdir(exist_ok=True)
        probe = root / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise GalleryError(
            f"Gallery folder {root} is not writable: {reason}. "
            "Choose another with --gallery-dir."
        ) from exc


SQLITE_CACHE_KIB = 32 * 1024  # page cache per connection
SQLITE_MMAP_BYTES = 1 << 30  # read the database through a memory map (shared with the OS page cache)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Enable WAL, foreign keys and a busy timeout on every new SQLite connection; give it a page cache and a
    memory map large enough that paging through a million rows reads pages from memory, not one ``read`` each."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.execute(f"PRAGMA mmap_size={SQLITE_MMAP_BYTES}")
        cursor.execute("PRAGMA temp_store=MEMORY")
    finally:
        cursor.close()


def make_engine(db_url: str | URL) -> Engine:
    """Create an engine; SQLite connections get the gallery pragmas."""
    engine = create_engine(db_url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_thumbnail(image: Image.Image) -> tuple[bytes, str]:
    """Encode a thumbnail (max side 256 px) as WebP, or JPEG without WebP support."""
    thumb = image.copy()
    thumb.thumbnail((THUMB_SIZE, THUMB_SIZE))
    buffer = io.BytesIO()
    if features.check("webp"):
        mode = "RGBA" if "A" in thumb.getbands() or thumb.mode == "P" else "RGB"
        thumb.convert(mode).save(buffer, format="WEBP", quality=80)
        return buffer.getvalue(), "webp"
    thumb.convert("RGB").save(buffer, format="JPEG", quality=85)
    return buffer.getvalue(), "jpg"


def _png_bytes(image: Image.Image) -> bytes:
    """Plain PNG encoding (used for trajectory sprites)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Gallery(GroupsMixin):
    """Generation gallery: SQLite/SQL database plus content-addressed media files."""

    def __init__(self, root: Path, engine: Engine) -> None:
        """Wrap an already migrated ``engine``; use :meth:`open` instead."""
        self.root = root
        self.engine = engine
        self.store = MediaStore(root)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self.totals = repo.CountCache()  # query totals, kept until the gallery changes

    @classmethod
    def open(cls, root: Path, db_url: str | None = None) -> Gallery:
        """Open (creating and migrating as needed) the gallery at ``root``."""
        root = Path(root).expanduser().absolute()
        _check_writable(root)
        url: str | URL = db_url or URL.create("sqlite", database=str(root / "gallery.db"))
        try:
            engine = make_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise GalleryError(f"Invalid gallery database URL: {exc}") from exc
        try:
            upgrade_to_head(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise GalleryError(
                f"Could not open the gallery database in {root}: "
                f"{getattr(exc, 'orig', None) or exc}. "
                "Choose another folder with --gallery-dir."
            ) from exc
        return cls(root, engine)

    def close(self) -> None:
        """Release all database connections."""
        self.engine.dispose()

    def __enter__(self) -> Gallery:
        """Context-manager support: ``with Gallery.open(p) as g``."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close on leaving the ``with`` block."""
        self.close()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session that commits on success and rolls back on error."""
        with self._sessions.begin() as session:
            yield session

    # -- writing ---------------------------------------------------------
    def _save_tracked(self, data: bytes, suffix: str, created: list[str]) -> str:
        """Save bytes via the store, remembering paths that did not exist before."""
        existed_before = self.store.exists(self.store.relative_path(data, suffix))
        rel = self.store.save_bytes(data, suffix)
        if not existed_before:
            created.append(rel)
        return rel

    def _row_fields(
        self, image: Image.Image, params: dict[str, Any], fields: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge ``fields`` with defaults taken from ``params`` and the image."""
        bad = sorted(set(fields) & set(PATH_FIELDS))
        if bad:
            raise ValueError(f"Do not pass {', '.join(bad)} in fields; paths are set by the gallery.")
        row = {col: params[key] for col, key in _FROM_PARAMS.items() if params.get(key) is not None}
        row.setdefault("width", image.width)
        row.setdefault("height", image.height)
        row["params"] = json_safe(params)
        row.update(fields)
        return row

    def save_image(
        self,
        image: Image.Image,
        *,
        params: dict[str, Any],
        fields: dict[str, Any],
        trajectory: Image.Image | None = None,
        trajectory_frames: int = 0,
    ) -> int:
        """Store an image (with thumbnail and optional trajectory sprite); return its id."""
        row_fields = self._row_fields(image, params, fields)
        return self._save_media(row_fields, encode_png(image, params), "png", image, trajectory, trajectory_frames)

    def save_audio(
        self,
        samples: Any,
        *,
        spectrogram: Image.Image,
        params: dict[str, Any],
        fields: dict[str, Any],
        trajectory: Image.Image | None = None,
        trajectory_frames: int = 0,
    ) -> int:
        """Store a clip as a WAV file carrying ``params`` (its thumbnail: the spectrogram picture); return its id."""
        from pipelines.audio import wav_bytes

        row_fields = self._row_fields(spectrogram, params, {"media_type": "audio", **fields})
        return self._save_media(row_fields, wav_bytes(samples, params), "wav", spectrogram, trajectory,
                                trajectory_frames)

    def save_video(
        self,
        frames: Any,
        *,
        fps: float,
        poster: Image.Image,
        params: dict[str, Any],
        fields: dict[str, Any],
        trajectory: Image.Image | None = None,
        trajectory_frames: int = 0,
    ) -> tuple[int, str | None]:
        """Store a clip ((F, H, W, 3) uint8 frames) as an MP4 carrying ``params`` (an animated PNG when ffmpeg is
        missing), with ``poster`` as its PNG thumbnail (carrying ``params`` too); return (id, a note when the
        clip could not be saved as MP4, saying how to fix that)."""
        from studio.gallery.video_files import encode_clip

        clip = encode_clip(frames, fps, params)
        if max(poster.size) > THUMB_SIZE:
            poster = poster.copy()
            poster.thumbnail((THUMB_SIZE, THUMB_SIZE))
        row_fields = self._row_fields(poster, params, {"media_type": "video", **fields})
        gen_id = self._save_media(row_fields, clip.data, clip.suffix, poster, trajectory, trajectory_frames,
                                  thumb=(encode_png(poster, params), "png"))
        return gen_id, clip.note

    def _save_media(self, row_fields: dict[str, Any], media: bytes, suffix: str, thumb_of: Image.Image,
                    trajectory: Image.Image | None, trajectory_frames: int,
                    thumb: tuple[bytes, str] | None = None) -> int:
        created: list[str] = []
        try:
            row_fields["media_path"] = self._save_tracked(media, suffix, created)
            thumb, thumb_suffix = thumb or make_thumbnail(thumb_of)
            row_fields["thumb_path"] = self._save_tracked(thumb, thumb_suffix, created)
            if trajectory is not None:
                sprite = _png_bytes(trajectory)
                row_fields["trajectory_path"] = self._save_tracked(sprite, "png", created)
                row_fields["trajectory_frames"] = int(trajectory_frames)
            with self.session() as session:
                row = repo.add_generation(session, **row_fields)
                repo.record_prompt(session, row.prompt)
                return row.id
        except BaseException:
            self._remove_unreferenced(created)
            raise

    def _remove_unreferenced(self, paths: list[str]) -> None:
        """Delete files in ``paths`` that no database row references."""
        if not paths:
            return
        try:
            with self.session() as session:
                orphans = [p for p in set(paths) if repo.count_path_references(session, p) == 0]
        except SQLAlchemyError:
            log.exception("Could not check file references; leaving %s on disk", paths)
            return
        for rel in orphans:
            self._delete_file(rel)

    def _delete_file(self, rel: str) -> None:
        """Delete one media file, logging (not raising) on failure."""
        try:
            self.store.delete(rel)
        except (OSError, ValueError):
            log.warning("Could not delete gallery file %s", rel, exc_info=True)

    def delete(self, gen_id: int) -> bool:
        """Delete a generation and its files not shared with other rows."""
        with self.session() as session:
            row = repo.delete_generation(session, gen_id)
            if row is None:
                return False
            paths = {getattr(row, name) for name in PATH_FIELDS} - {None, ""}
            orphans = [p for p in paths if repo.count_path_references(session, p) == 0]
        for rel in orphans:
            self._delete_file(rel)
        return True

    def set_favourite(self, gen_id: int, value: bool) -> bool:
        """Set the favourite flag; False if the id is unknown."""
        with self.session() as session:
            return repo.set_favourite(session, gen_id, value)

    # -- reading ---------------------------------------------------------
    def get(self, gen_id: int) -> Generation | None:
        """Return a detached generation row or None."""
        with self.session() as session:
            return repo.get_generation(session, gen_id)

    def search(self, query: GalleryQuery) -> tuple[list[Generation], int]:
        """Search rows (detached, newest first: the most recently saved, highest id) and the total count, see
        :class:`GalleryQuery`; the total of a query seen before is kept until the gallery changes (``totals``)."""
        with self.session() as session:
            return repo.search_generations(session, query, self.totals)

    def recent_prompts(self, limit: int = 20) -> list[PromptHistory]:
        """Most recently used prompts (detached rows)."""
        with self.session() as session:
            return repo.recent_prompts(session, limit)

    def distinct_values(self, column_name: str) -> list[str]:
        """Filter choices for ``model_id``, ``family`` or ``media_type``."""
        with self.session() as session:
            return repo.distinct_values(session, column_name)

    def count(self) -> int:
        """Number of generations."""
        with self.session() as session:
            return repo.count_generations(session)

    def read_media(self, gen_id: int) -> tuple[Path, str]:
        """Absolute media path (checked to be inside the root) and media type."""
        row = self.get(gen_id)
        if row is None:
            raise KeyError(gen_id)
        return self.store.resolve(row.media_path), row.media_type

    def sound_error(self, gen_id: int) -> str | None:
        """None when gallery item ``gen_id``'s WAV reads; else why it cannot be played (missing, not a WAV)."""
        from pipelines.audio import read_wav

        try:
            path, _ = self.read_media(gen_id)
            read_wav(path.read_bytes())
        except KeyError:
            return f"gallery item #{gen_id} does not exist"
        except (OSError, ValueError) as exc:
            return f"its sound file cannot be played: {exc}"
        return None

    def video_error(self, gen_id: int) -> str | None:
        """None when gallery item ``gen_id``'s clip (MP4 or animated PNG) reads; else why it cannot be played."""
        from studio.gallery.video_files import clip_error

        try:
            path, _ = self.read_media(gen_id)
        except KeyError:
            return f"gallery item #{gen_id} does not exist"
        except ValueError as exc:
            return f"its video file cannot be played: {exc}"
        return clip_error(path)

    def image_error(self, gen_id: int) -> str | None:
        """None when gallery item ``gen_id``'s picture decodes; else why it cannot be shown (missing, truncated)."""
        try:
            self.load_image(gen_id)
        except ValueError as exc:
            return str(exc)
        return None

    def load_image(self, gen_id: Any) -> Image.Image:
        """The RGB image of gallery item ``gen_id``; ValueError with a message for anything else."""
        try:
            row = self.get(int(gen_id))
        except (TypeError, ValueError):
            raise ValueError(f"{gen_id!r} is not a gallery item number.") from None
        if row is None or row.media_type != "image":
            raise ValueError(f"Gallery item #{gen_id} is not an image in the gallery.")
        try:
            with Image.open(self.store.resolve(row.media_path)) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as exc:
            raise ValueError(f"The file of gallery item #{gen_id} cannot be read ({exc}).") from None

    def integrity_check(self) -> str:
        """``"ok"`` when the database (and FTS index on SQLite) is consistent."""
        if self.engine.dialect.name != "sqlite":
            return "ok"
        with self.engine.begin() as connection:
            rows = connection.exec_driver_sql("PRAGMA integrity_check").scalars().all()
            problems = [str(r) for r in rows if r != "ok"]
            try:
                connection.exec_driver_sql(
                    "INSERT INTO generations_fts(generations_fts, rank) VALUES ('integrity-check', 1)"
                )
            except SQLAlchemyError as exc:
                problems.append(f"full-text index: {exc.orig or exc}")
        return "ok" if not problems else "\n".join(problems)
