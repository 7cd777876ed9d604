"""SQLAlchemy 2 typed ORM models for the studio gallery.

The schema itself is owned by the Alembic migrations in
``studio/gallery/migrations``; these classes must stay in sync with them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

MEDIA_TYPES = ("image", "audio", "video")
STATUSES = ("ok", "cancelled", "failed")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Normalise a datetime to aware UTC; naive values are taken to be UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """DateTime stored as UTC and always returned timezone-aware (UTC).

    SQLite has no timezone support, so values are converted to UTC before
    binding (also in WHERE clauses) and tagged as UTC when read back.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC; strip tzinfo for SQLite so strings compare correctly."""
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return an aware UTC datetime."""
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    """Declarative base for all gallery tables."""


class Generation(Base):
    """One generated media item (image, audio clip or video)."""

    __tablename__ = "generations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    media_type: Mapped[str] = mapped_column(String(16), default="image", index=True)
    family: Mapped[str] = mapped_column(String(64), default="", index=True)
    model_id: Mapped[str] = mapped_column(String(255), default="", index=True)
    prompt: Mapped[str] = mapped_column(Text, default="")
    negative_prompt: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    guidance: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    scheduler: Mapped[str] = mapped_column(String(64), default="")
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    media_path: Mapped[str] = mapped_column(String(512), index=True)
    thumb_path: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    trajectory_path: Mapped[str | None] = mapped_column(String(512), nullable=True, index=True)
    trajectory_frames: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="ok")
    favourite: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    group_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)

    __table_args__ = (
        Index("ix_generations_model_id_guidance", "model_id", "guidance"),
        Index("ix_generations_created_at_filters", "created_at", "model_id", "family", "media_type", "guidance",
              "favourite"),
        Index("ix_generations_id", "id").ddl_if(dialect="sqlite"),
    )

    def __repr__(self) -> str:
        """Short debugging representation."""
        return f"<Generation id={self.id} {self.media_type} model={self.model_id!r}>"

    def to_dict(self) -> dict[str, Any]:
        """Return all column values as a plain dict (safe after session close)."""
        return {c.key: getattr(self, c.key) for c in self.__table__.columns}


class GenerationGroup(Base):
    """A study saved as one unit (a guidance sweep, a sampler grid): settings and measured
    summary in ``data``; its images are ordinary generations with ``group_id`` = this id."""

    __tablename__ = "generation_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    title: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[str] = mapped_column(String(255), default="")
    prompt: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="running")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    def __repr__(self) -> str:
        """Short debugging representation."""
        return f"<GenerationGroup id={self.id} {self.kind} {self.status}>"


class PromptHistory(Base):
    """A distinct prompt text with usage statistics."""

    __tablename__ = "prompt_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text, unique=True)
    first_used: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    times_used: Mapped[int] = mapped_column(Integer, default=1)

    def __repr__(self) -> str:
        """Short debugging representation."""
        return f"<PromptHistory id={self.id} times_used={self.times_used}>"


class EmbeddingRow(Base):
    """A cached unit embedding: one model (name + weights digest) × one item (image pixels or text)."""

    __tablename__ = "embeddings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_key: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(8))  # "image" | "text"
    item_key: Mapped[str] = mapped_column(String(64))  # media file digest or text sha256
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian

    __table_args__ = (UniqueConstraint("model_key", "kind", "item_key", name="uq_embeddings_item"),)


class ProjectionRow(Base):
    """A cached 2-D/3-D map: ``key`` digests the model, method, parameters and the exact item set."""

    __tablename__ = "projections"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    n: Mapped[int] = mapped_column(Integer)
    dims: Mapped[int] = mapped_column(Integer)
    coords: Mapped[bytes] = mapped_column(LargeBinary)  # float32 (n, dims)


class GenerationCount(Base):
    """How many generations have this (model, family, media type, favourite, guidance); kept by triggers
    (migration 0004) on SQLite and PostgreSQL, read to count a page's rows without reading them."""

    __tablename__ = "generation_counts"

    model_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    family: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    favourite: Mapped[bool] = mapped_column(Boolean, primary_key=True)
    guidance: Mapped[float] = mapped_column(Float, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class GalleryCounter(Base):
    """A named counter kept by triggers (migration 0004): "version" goes up with every change to ``generations``
    (on SQLite and PostgreSQL; elsewhere the row is absent)."""

    __tablename__ = "gallery_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class GalleryChange(Base):
    """A journal entry written by triggers (migration 0004): row ``gen_id`` was inserted (``op`` "i") or deleted
    (``op`` "d", with the file paths it used). The startup sweep reads and clears it."""

    __tablename__ = "gallery_changes"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    gen_id: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(1))
    media_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    thumb_path: Mapped[str | None] = mapped_column(String(512), nullable=True)
    trajectory_path: Mapped[str | None] = mapped_column(String(512), nullable=True)

    __table_args__ = {"sqlite_autoincrement": True}


class GalleryState(Base):
    """A small JSON document by name (the startup sweep's checkpoint: ``name`` "sweep")."""

    __tablename__ = "gallery_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
