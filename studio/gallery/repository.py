"""Pure data-access functions for the gallery; every function takes a ``Session``.

Transactions are the caller's business (see :meth:`Gallery.session`); these
functions only ``flush`` so that ids are available.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from studio.gallery.models import MEDIA_TYPES, STATUSES, Generation, PromptHistory, utcnow
from studio.gallery.query import GalleryQuery, fts5_expression, text_clause

__all__ = [
    "GalleryQuery",
    "add_generation",
    "count_generations",
    "delete_generation",
    "distinct_values",
    "fts5_expression",
    "get_generation",
    "record_prompt",
    "recent_prompts",
    "search_generations",
    "set_favourite",
]

DISTINCT_COLUMNS = ("model_id", "family", "media_type")
_NEWEST_FIRST = (Generation.created_at.desc(), Generation.id.desc())


def _dialect(session: Session) -> str:
    """Name of the database dialect bound to ``session``."""
    return session.get_bind().dialect.name


def add_generation(session: Session, **fields: Any) -> Generation:
    """Insert a generation row built from ``fields`` (column names) and flush it."""
    media_type = fields.get("media_type", "image")
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media_type must be one of {', '.join(MEDIA_TYPES)}, not {media_type!r}.")
    status = fields.get("status", "ok")
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {status!r}.")
    if not fields.get("media_path"):
        raise ValueError("media_path is required to add a generation.")
    row = Generation(**fields)
    session.add(row)
    session.flush()
    return row


def get_generation(session: Session, gen_id: int) -> Generation | None:
    """Return the generation with ``gen_id`` or None."""
    return session.get(Generation, gen_id)


def _filter_conditions(query: GalleryQuery, dialect_name: str) -> list[ColumnElement[bool]]:
    """Translate a :class:`GalleryQuery` into WHERE conditions."""
    conditions: list[ColumnElement[bool]] = []
    search = text_clause(query.text, dialect_name)
    if search is not None:
        conditions.append(search)
    for name in DISTINCT_COLUMNS:
        value = getattr(query, name)
        if value is not None and str(value).strip():
            conditions.append(getattr(Generation, name) == value)
    if query.guidance_min is not None:
        conditions.append(Generation.guidance >= query.guidance_min)
    if query.guidance_max is not None:
        conditions.append(Generation.guidance <= query.guidance_max)
    if query.created_after is not None:
        conditions.append(Generation.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(Generation.created_at < query.created_before)
    if query.favourites_only:
        conditions.append(Generation.favourite.is_(True))
    return conditions


def _run_search(
    session: Session, query: GalleryQuery, conditions: list[ColumnElement[bool]]
) -> tuple[list[Generation], int]:
    """Execute the page query and the count query for ``conditions``."""
    total = session.scalar(select(func.count(Generation.id)).where(*conditions)) or 0
    page: Select[tuple[Generation]] = (
        select(Generation)
        .where(*conditions)
        .order_by(*_NEWEST_FIRST)
        .offset(query.offset)
        .limit(query.page_size)
    )
    return list(session.scalars(page)), int(total)


def search_generations(session: Session, query: GalleryQuery) -> tuple[list[Generation], int]:
    """Return ``(rows for the requested page, total matching rows)``, newest first."""
    dialect_name = _dialect(session)
    return _run_search(session, query, _filter_conditions(query, dialect_name))


def search_generations_like(
    session: Session, query: GalleryQuery
) -> tuple[list[Generation], int]:
    """Search with the portable LIKE text filter regardless of dialect.

    This is the code path used for PostgreSQL and other non-SQLite databases.
    """
    return _run_search(session, query, _filter_conditions(query, "generic"))


def delete_generation(session: Session, gen_id: int) -> Generation | None:
    """Delete a generation and return the (detached) row so callers can remove files."""
    row = session.get(Generation, gen_id)
    if row is None:
        return None
    session.delete(row)
    session.flush()
    return row


def set_favourite(session: Session, gen_id: int, value: bool) -> bool:
    """Set the favourite flag; return False when no row has ``gen_id``."""
    result = session.execute(
        update(Generation)
        .where(Generation.id == gen_id)
        .values(favourite=bool(value))
        .execution_options(synchronize_session="fetch")
    )
    return bool(result.rowcount)


def record_prompt(session: Session, text: str) -> PromptHistory | None:
    """Insert ``text`` into prompt history or bump its use count; ignore blank text."""
    if not isinstance(text, str) or not text.strip():
        return None
    now = utcnow()
    table = PromptHistory.__table__
    dialect_name = _dialect(session)
    if dialect_name in ("sqlite", "postgresql"):
        insert = sqlite.insert if dialect_name == "sqlite" else postgresql.insert
        stmt = insert(table).values(text=text, first_used=now, last_used=now, times_used=1)
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.text],
            set_={"last_used": now, "times_used": table.c.times_used + 1},
        )
        session.execute(stmt)
    else:
        _record_prompt_generic(session, text)
    return session.scalars(
        select(PromptHistory)
        .where(PromptHistory.text == text)
        .execution_options(populate_existing=True)
    ).one()


def _record_prompt_generic(session: Session, text: str) -> None:
    """Select-then-insert/update fallback for dialects without upsert support."""
    row = session.scalar(select(PromptHistory).where(PromptHistory.text == text))
    if row is None:
        session.add(PromptHistory(text=text, times_used=1))
    else:
        row.times_used += 1
        row.last_used = utcnow()
    session.flush()


def recent_prompts(session: Session, limit: int = 20) -> list[PromptHistory]:
    """Most recently used prompts, newest first."""
    limit = max(1, min(int(limit), 1000))
    stmt = (
        select(PromptHistory)
        .order_by(PromptHistory.last_used.desc(), PromptHistory.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def distinct_values(session: Session, column_name: str) -> list[str]:
    """Sorted distinct non-empty values of ``model_id``, ``family`` or ``media_type``."""
    if column_name not in DISTINCT_COLUMNS:
        raise ValueError(
            f"Cannot list values of {column_name!r}; use one of {', '.join(DISTINCT_COLUMNS)}."
        )
    column = getattr(Generation, column_name)
    stmt = select(column).where(column != "").distinct().order_by(column)
    return [value for value in session.scalars(stmt) if value is not None]


def count_generations(session: Session) -> int:
    """Total number of generation rows."""
    return int(session.scalar(select(func.count(Generation.id))) or 0)


def count_path_references(session: Session, rel_path: str) -> int:
    """Rows whose media, thumbnail or trajectory path equals ``rel_path``."""
    stmt = select(func.count(Generation.id)).where(
        (Generation.media_path == rel_path)
        | (Generation.thumb_path == rel_path)
        | (Generation.trajectory_path == rel_path)
    )
    return int(session.scalar(stmt) or 0)

