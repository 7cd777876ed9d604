"""Counting gallery rows: totals of a search (from ``generation_counts`` where it can answer, else ``count(*)``),
the :class:`CountCache` that keeps them while the gallery is unchanged, and plain row counts.

Every function takes a ``Session``; transactions are the caller's business (see :meth:`Gallery.session`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from studio.gallery.models import GalleryCounter, Generation, GenerationCount
from studio.gallery.query import GalleryQuery, clean_search_text

__all__ = [
    "DISTINCT_COLUMNS",
    "CountCache",
    "count_generations",
    "count_matching",
    "count_path_references",
    "counted_total",
]

# The equality filters of a GalleryQuery (also columns of ``generation_counts``).
DISTINCT_COLUMNS = ("model_id", "family", "media_type")

T = TypeVar("T")


def counted_total(session: Session, query: GalleryQuery) -> int | None:
    """The number of rows matching ``query`` summed from ``generation_counts`` (kept by triggers on SQLite and
    PostgreSQL), or None where that table cannot answer (text or dates in the query, another database)."""
    if session.get_bind().dialect.name not in ("sqlite", "postgresql") or clean_search_text(query.text):
        return None
    if query.created_after is not None or query.created_before is not None:
        return None
    conditions: list[ColumnElement[bool]] = []
    for name in DISTINCT_COLUMNS:
        value = getattr(query, name)
        if value is not None and str(value).strip():
            conditions.append(getattr(GenerationCount, name) == value)
    if query.guidance_min is not None:
        conditions.append(GenerationCount.guidance >= query.guidance_min)
    if query.guidance_max is not None:
        conditions.append(GenerationCount.guidance <= query.guidance_max)
    if query.favourites_only:
        conditions.append(GenerationCount.favourite.is_(True))
    return int(session.scalar(select(func.coalesce(func.sum(GenerationCount.n), 0)).where(*conditions)) or 0)


def count_matching(session: Session, query: GalleryQuery, conditions: list[ColumnElement[bool]]) -> int:
    """Rows matching ``conditions`` (those of ``query``): from the counts table where it can answer, else
    ``count(*)`` (which SQLite reads from an index; without filters, from its pages' headers alone)."""
    counted = counted_total(session, query)
    if counted is not None:
        return counted
    return int(session.scalar(select(func.count()).select_from(Generation).where(*conditions)) or 0)


class CountCache:
    """Totals of recent queries, kept while the gallery's "version" counter (``gallery_counters``, bumped by
    triggers on every change to ``generations``) stays the same: paging through a result (◀ Newer / Older ▶)
    counts it once. Thread-safe; a database without the counter row is never cached."""

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._version: int | None = None
        self._totals: OrderedDict[GalleryQuery, Any] = OrderedDict()

    def clear(self) -> None:
        """Forget every total."""
        with self._lock:
            self._totals.clear()

    def get(self, session: Session, query: GalleryQuery, compute: Callable[[], T]) -> T:
        """What ``compute()`` says about ``query`` (its page left out: its total, and how it was counted), from the
        cache or computed and kept."""
        version = session.scalar(select(GalleryCounter.value).where(GalleryCounter.name == "version"))
        if version is None:
            return compute()
        key = replace(query, page=1, page_size=1)
        with self._lock:
            if version != self._version:
                self._totals.clear()
                self._version = version
            if key in self._totals:
                self._totals.move_to_end(key)
                return self._totals[key]
        value = compute()
        with self._lock:
            if version == self._version:
                self._totals[key] = value
                while len(self._totals) > self.size:
                    self._totals.popitem(last=False)
        return value


def count_generations(session: Session) -> int:
    """Total number of generation rows (``count(*)``: SQLite counts it from an index's page headers)."""
    return int(session.scalar(select(func.count()).select_from(Generation)) or 0)


def count_path_references(session: Session, rel_path: str) -> int:
    """Rows whose media, thumbnail or trajectory path equals ``rel_path``."""
    stmt = select(func.count()).select_from(Generation).where(
        (Generation.media_path == rel_path)
        | (Generation.thumb_path == rel_path)
        | (Generation.trajectory_path == rel_path)
    )
    return int(session.scalar(stmt) or 0)
