"""Gallery search query object and dialect-aware text-search clause builders.

User text never reaches SQL as syntax: on SQLite it is turned into a quoted
FTS5 expression passed as a bound parameter; elsewhere it becomes escaped
``ILIKE`` patterns.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Integer, and_, column, or_, text
from sqlalchemy.sql import false, true

from studio.gallery.models import Generation, as_utc

MAX_QUERY_CHARS = 1000
MAX_QUERY_WORDS = 32
MAX_PAGE_SIZE = 200
LIKE_ESCAPE = "\\"
TEXT_COLUMNS = "{prompt negative_prompt}"  # an FTS5 column filter: the columns user words are searched in
# Character categories removed from search text: controls, format marks
# (e.g. bidi overrides), lone surrogates and unassigned code points.
_DROP_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn"})


@dataclass(frozen=True)
class GalleryQuery:
    """Filters and paging for :func:`studio.gallery.repository.search_generations`.

    Empty strings for ``model_id``/``family``/``media_type`` mean "any".
    ``created_after`` is inclusive, ``created_before`` exclusive; naive
    datetimes are taken to be UTC.
    """

    text: str = ""
    model_id: str | None = None
    family: str | None = None
    media_type: str | None = None
    guidance_min: float | None = None
    guidance_max: float | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    favourites_only: bool = False
    page: int = 1
    page_size: int = 24

    def __post_init__(self) -> None:
        """Validate paging and ranges; raise ``ValueError`` explaining the fix."""
        _check_int("page", self.page)
        _check_int("page_size", self.page_size)
        if self.page < 1:
            raise ValueError(f"Page must be 1 or higher (got {self.page}).")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(
                f"Page size must be between 1 and {MAX_PAGE_SIZE} (got {self.page_size})."
            )
        _check_guidance("guidance_min", self.guidance_min)
        _check_guidance("guidance_max", self.guidance_max)
        if self.guidance_min is not None and self.guidance_max is not None:
            if self.guidance_min > self.guidance_max:
                raise ValueError(
                    f"Minimum guidance {self.guidance_min} is larger than maximum "
                    f"{self.guidance_max}: swap them or widen the range."
                )
        if self.created_after is not None and self.created_before is not None:
            if as_utc(self.created_after) > as_utc(self.created_before):
                raise ValueError(
                    "The 'created after' date is later than the 'created before' date: "
                    "swap them or widen the range."
                )

    @property
    def offset(self) -> int:
        """Number of rows to skip for this page."""
        return (self.page - 1) * self.page_size


def _check_int(name: str, value: object) -> None:
    """Reject non-integer paging values (bool included)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number (got {value!r}).")


def _check_guidance(name: str, value: float | None) -> None:
    """Require a finite number (or None) for a guidance bound."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or empty (got {value!r}).")


def clean_search_text(raw: str) -> str:
    """Strip control/format characters and cap the length of user search text."""
    if not isinstance(raw, str):
        return ""
    cleaned = "".join(
        " " if unicodedata.category(ch) in _DROP_CATEGORIES else ch
        for ch in raw[: MAX_QUERY_CHARS * 2]
    )
    return cleaned[:MAX_QUERY_CHARS].strip()


def search_words(raw: str) -> list[str]:
    """Split user text into at most ``MAX_QUERY_WORDS`` whitespace-separated words."""
    return clean_search_text(raw).split()[:MAX_QUERY_WORDS]


def _has_token_chars(word: str) -> bool:
    """True if FTS5's unicode61 tokenizer would find a token in ``word``."""
    return any(ch.isalnum() or unicodedata.category(ch) == "Co" for ch in word)


def fts5_words(raw: str) -> list[str]:
    """The words of ``raw`` that FTS5 can search for (at most ``MAX_QUERY_WORDS``)."""
    return [w for w in search_words(raw) if _has_token_chars(w)]


def _fts5_string(word: str) -> str:
    """``word`` as an FTS5 string (double-quoted, inner quotes doubled)."""
    return '"' + word.replace('"', '""') + '"'


def fts5_expression(raw: str, last_terms: Sequence[str] | None = None) -> str | None:
    """Turn user text into a safe FTS5 MATCH expression, or None if nothing is searchable.

    Every word is a double-quoted string (inner quotes doubled), the last word is a prefix query, and words are
    ANDed, in the two prompt columns only (``TEXT_COLUMNS``: the index's third column holds facet terms, see
    :func:`facet_terms`). ``last_terms``: the index's terms that start with the last word, when the caller
    looked them up; the last word then becomes those exact terms ORed (an FTS5 prefix query copies the doclists
    of all its terms before it returns the first row; exact terms are read lazily, newest first).
    """
    words = fts5_words(raw)
    if not words:
        return None
    quoted = [_fts5_string(w) for w in words]
    if last_terms is None:
        quoted[-1] += "*"
    elif len(last_terms) > 1:
        quoted[-1] = "(" + " OR ".join(_fts5_string(t) for t in last_terms) + ")"
    elif last_terms:
        quoted[-1] = _fts5_string(last_terms[0])
    # no term starts with the last word: its exact string matches nothing, as the prefix query would
    return TEXT_COLUMNS + " : (" + " AND ".join(quoted) + ")"


def facet_terms(query: GalleryQuery) -> list[str]:
    """The full-text index's facet terms for the equality filters of ``query`` (migration 0005 writes the same
    ones for every row): media type, family and model id as lower-case hex of their UTF-8 bytes, and the
    favourite flag."""
    terms = [prefix + value.encode("utf-8").hex()
             for prefix, value in (("zt", query.media_type), ("zf", query.family), ("zm", query.model_id))
             if value is not None and str(value).strip()]
    if query.favourites_only:
        terms.append("zv1")
    return terms


def with_facets(expression: str, facets: Sequence[str]) -> str:
    """``expression`` (from :func:`fts5_expression`) ANDed with the facet terms (which hold no quotes)."""
    if not facets:
        return expression
    return expression + " AND facets : (" + " AND ".join(f'"{t}"' for t in facets) + ")"


def escape_like(word: str) -> str:
    """Escape LIKE wildcards (``%``, ``_``) and the escape character itself."""
    return (
        word.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )


def like_clause(raw: str) -> ColumnElement[bool]:
    """Case-insensitive LIKE search: every word must occur in prompt or negative prompt."""
    words = search_words(raw)
    if not words:
        return true()
    per_word = []
    for word in words:
        pattern = f"%{escape_like(word)}%"
        per_word.append(
            or_(
                Generation.prompt.ilike(pattern, escape=LIKE_ESCAPE),
                Generation.negative_prompt.ilike(pattern, escape=LIKE_ESCAPE),
            )
        )
    return and_(*per_word)


def fts_clause(raw: str) -> ColumnElement[bool]:
    """SQLite FTS5 search clause (falls back to LIKE for symbol-only text)."""
    expression = fts5_expression(raw)
    if expression is None:
        return like_clause(raw) if search_words(raw) else false()
    return Generation.id.in_(
        text(
            "SELECT rowid FROM generations_fts WHERE generations_fts MATCH :fts_query"
        )
        .bindparams(fts_query=expression)
        .columns(column("rowid", Integer))
    )


def text_clause(raw: str, dialect_name: str) -> ColumnElement[bool] | None:
    """Text-search clause for ``dialect_name``; None when the text is empty."""
    if not clean_search_text(raw):
        return None
    return fts_clause(raw) if dialect_name == "sqlite" else like_clause(raw)
