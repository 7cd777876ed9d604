"""Pure data-access functions for the gallery; every function takes a ``Session``.

Transactions are the caller's business (see :meth:`Gallery.session`); these
functions only ``flush`` so that ids are available.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from sqlalchemy import ColumnElement, Integer, bindparam, column, func, literal_column, select, table, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

# Counting lives in ``studio.gallery.counts``; its public names stay importable from here (``repo.CountCache``,
# ``repo.count_path_references``, ...).
from studio.gallery.counts import (
    DISTINCT_COLUMNS,
    CountCache,
    count_generations,
    count_matching,
    count_path_references,
)
from studio.gallery.models import MEDIA_TYPES, STATUSES, Generation, PromptHistory, utcnow
from studio.gallery.query import (
    GalleryQuery,
    facet_terms,
    fts5_expression,
    fts5_words,
    text_clause,
    with_facets,
)

__all__ = [
    "CountCache",
    "GalleryQuery",
    "add_generation",
    "count_generations",
    "count_path_references",
    "delete_generation",
    "distinct_values",
    "fts5_expression",
    "get_generation",
    "record_prompt",
    "recent_prompts",
    "search_generations",
    "set_favourite",
]


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


def _column(name: str, plain: bool) -> Any:
    """``generations.<name>``; ``plain``: written ``+generations.<name>`` (SQLite), which keeps the query planner
    from reading it through an index of its own."""
    col = Generation.__table__.c[name]
    return literal_column(f"+generations.{name}", col.type) if plain else col


def _filter_conditions(
    query: GalleryQuery, dialect_name: str, *, with_text: bool = True
) -> list[ColumnElement[bool]]:
    """Translate a :class:`GalleryQuery` into WHERE conditions (the text search left out when not ``with_text``).

    With a date range on SQLite the other filters are written plain (``+column``): the date range is then read
    from ``ix_generations_created_at_filters``, which holds every filter column, instead of an index of one of
    them followed by a row lookup per entry (without statistics SQLite takes equality over a range)."""
    conditions: list[ColumnElement[bool]] = []
    search = text_clause(query.text, dialect_name) if with_text else None
    if search is not None:
        conditions.append(search)
    dated = query.created_after is not None or query.created_before is not None
    plain = dated and dialect_name == "sqlite"
    for name in DISTINCT_COLUMNS:
        value = getattr(query, name)
        if value is not None and str(value).strip():
            conditions.append(_column(name, plain) == value)
    if query.guidance_min is not None:
        conditions.append(_column("guidance", plain) >= query.guidance_min)
    if query.guidance_max is not None:
        conditions.append(_column("guidance", plain) <= query.guidance_max)
    if query.created_after is not None:
        conditions.append(Generation.created_at >= query.created_after)
    if query.created_before is not None:
        conditions.append(Generation.created_at < query.created_before)
    if query.favourites_only:
        conditions.append(_column("favourite", plain).is_(True))
    return conditions


def _page_window(query: GalleryQuery, total: int) -> tuple[bool, int, int]:
    """``(newest_first, offset, limit)`` that fetch the requested page of ``total`` rows.

    A page in the older half is read from the oldest end (ascending, then reversed), so the last pages cost
    what the first ones do instead of skipping almost every row."""
    offset, limit = query.offset, query.page_size
    if offset >= total:
        return True, offset, 0
    if offset * 2 <= total:
        return True, offset, limit
    start = max(0, total - offset - limit)
    return False, start, total - offset - start


def _fetch_rows(session: Session, ids: list[int]) -> list[Generation]:
    """The rows with ``ids``, in that order."""
    if not ids:
        return []
    found = {row.id: row for row in session.scalars(select(Generation).where(Generation.id.in_(ids)))}
    return [found[i] for i in ids if i in found]


def _run_search(
    session: Session, query: GalleryQuery, conditions: list[ColumnElement[bool]], totals: CountCache | None = None
) -> tuple[list[Generation], int]:
    """Count the rows matching ``conditions``, then read the page: ids first (newest first: highest id first,
    through an index where the filters allow), then those rows."""
    if totals is None:
        total = count_matching(session, query, conditions)
    else:
        total = totals.get(session, query, lambda: count_matching(session, query, conditions))
    newest_first, offset, limit = _page_window(query, total)
    if limit <= 0:
        return [], total
    order = Generation.id.desc() if newest_first else Generation.id.asc()
    ids = list(session.scalars(select(Generation.id).where(*conditions).order_by(order).offset(offset).limit(limit)))
    return _fetch_rows(session, ids if newest_first else ids[::-1]), total


_FTS = table("generations_fts", column("rowid", Integer))
# The 0004 migration's fts5vocab table over the index (one row per term instance; read lazily, by term range).
_NEXT_TERM = text("SELECT term FROM generations_fts_terms WHERE term >= :lo AND term < :hi LIMIT 1")
MAX_PREFIX_TERMS = 24  # a last word that starts more terms than this stays an FTS5 prefix query
SMALL_MATCH = 2000  # up to this many text matches, filters are checked on each matching row
_PLAIN_WORD = re.compile(r"[A-Za-z0-9]+")


def prefix_terms(session: Session, prefix: str) -> list[str] | None:
    """The full-text index's terms that start with ``prefix`` (lower-case ASCII letters and digits, which the
    unicode61 tokenizer keeps as they are), or None when there are more than ``MAX_PREFIX_TERMS``."""
    hi = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    terms: list[str] = []
    lo = prefix
    while True:
        term = session.scalar(_NEXT_TERM, {"lo": lo, "hi": hi})
        if term is None:
            return terms
        if len(terms) == MAX_PREFIX_TERMS:
            return None
        terms.append(term)
        lo = term + "\x01"  # the next term after ``term`` (terms hold no control characters)


def fts_match_expression(session: Session, raw: str) -> str | None:
    """The FTS5 expression for the user's text, its last (prefix) word spelled out as the index's terms when it
    is a plain word; None when nothing is searchable."""
    words = fts5_words(raw)
    if not words:
        return None
    last = words[-1]
    if not _PLAIN_WORD.fullmatch(last):
        return fts5_expression(raw)
    return fts5_expression(raw, prefix_terms(session, last.lower()))


def _run_fts_search(
    session: Session, query: GalleryQuery, expression: str, conditions: list[ColumnElement[bool]],
    totals: CountCache | None = None,
) -> tuple[list[Generation], int]:
    """SQLite full-text search: the FTS5 index delivers matching rowids newest (highest) first, so a page stops
    after its rows. ``expression`` holds the equality filters as facet terms; ``conditions`` (all filters, given
    only when a guidance or date range needs the rows) are applied outside the FTS query, in one of two ways:

    - look up each match's row and check the filters (cheap for few matches, or for a page near either end when
      the filters keep most matches);
    - build the set of ids the filters keep (from an index) and look each match up in it (cheaper when the
      filters keep no more than a few times as many rows as the text matches).

    The total is counted once per query and gallery version (``totals``). The ``+`` before
    ``generations_fts.rowid`` stops SQLite from turning the join around (probing the FTS index once per filtered
    row, which re-runs the MATCH each time)."""
    match = literal_column("generations_fts").op("MATCH")(bindparam("fts_query", expression))
    rowid = _FTS.c.rowid
    kept_ids = literal_column("+generations_fts.rowid").in_(select(Generation.id).where(*conditions))
    joined = _FTS.join(Generation.__table__, Generation.id == literal_column("+generations_fts.rowid"))

    def shape(as_set: bool) -> tuple[Any, list[ColumnElement[bool]]]:
        if not conditions:
            return _FTS, [match]
        return (_FTS, [match, kept_ids]) if as_set else (joined, [match, *conditions])

    def plan() -> tuple[int, int, int | None]:
        """(total, text matches, rows the filters keep: None when not counted)."""
        n_text = int(session.scalar(select(func.count()).select_from(_FTS).where(match)) or 0)
        if not conditions or n_text == 0:
            return n_text, n_text, None
        kept = count_matching(session, replace(query, text=""), conditions) if n_text > SMALL_MATCH else None
        if kept == 0:
            return 0, n_text, 0
        source, where = shape(kept is not None and kept <= 3 * n_text)
        return int(session.scalar(select(func.count()).select_from(source).where(*where)) or 0), n_text, kept

    total, n_text, kept = plan() if totals is None else totals.get(session, query, plan)
    newest_first, offset, limit = _page_window(query, total)
    if limit <= 0:
        return [], total
    # The page: walking the matches newest first, a row lookup per match until the page is full costs about
    # (offset + limit) * n_text / total lookups; the set of kept ids costs ``kept`` to build. Take the cheaper.
    lookups = (offset + limit) * n_text / max(total, 1)
    source, where = shape(kept is not None and 4 * lookups > kept)
    order = rowid.desc() if newest_first else rowid.asc()
    stmt = select(rowid).select_from(source).where(*where).order_by(order).offset(offset).limit(limit)
    ids = [int(i) for i in session.scalars(stmt)]
    return _fetch_rows(session, ids if newest_first else ids[::-1]), total


def search_generations(
    session: Session, query: GalleryQuery, totals: CountCache | None = None
) -> tuple[list[Generation], int]:
    """Return ``(rows for the requested page, total matching rows)``, newest (most recently saved) first.
    ``totals``: where to keep and find the total of a query seen before."""
    dialect_name = _dialect(session)
    if dialect_name == "sqlite":
        expression = fts_match_expression(session, query.text)
        if expression is not None:
            # The equality filters are facet terms of the index (migration 0005): FTS5 intersects them with the
            # text itself. Only a guidance or date range still needs the rows (all filters then go to SQL too).
            ranged = any(v is not None for v in (query.guidance_min, query.guidance_max,
                                                 query.created_after, query.created_before))
            conditions = _filter_conditions(query, dialect_name, with_text=False) if ranged else []
            return _run_fts_search(session, query, with_facets(expression, facet_terms(query)), conditions,
                                   totals)
    return _run_search(session, query, _filter_conditions(query, dialect_name), totals)


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
