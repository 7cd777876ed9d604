"""Initial gallery schema: generations, prompt_history and (SQLite) FTS5 index.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Note for later SQLite migrations: batch mode re-creates ``generations`` on
ALTER, which drops its triggers; re-create the FTS triggers afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXED = ("created_at", "media_type", "family", "model_id", "guidance", "favourite")

FTS_CREATE: tuple[str, ...] = (
    "CREATE VIRTUAL TABLE generations_fts USING fts5("
    "prompt, negative_prompt, content='generations', content_rowid='id')",
    "CREATE TRIGGER generations_fts_ai AFTER INSERT ON generations BEGIN "
    "INSERT INTO generations_fts(rowid, prompt, negative_prompt) "
    "VALUES (new.id, new.prompt, new.negative_prompt); END",
    "CREATE TRIGGER generations_fts_ad AFTER DELETE ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, prompt, negative_prompt) "
    "VALUES ('delete', old.id, old.prompt, old.negative_prompt); END",
    "CREATE TRIGGER generations_fts_au AFTER UPDATE OF prompt, negative_prompt "
    "ON generations BEGIN "
    "INSERT INTO generations_fts(generations_fts, rowid, prompt, negative_prompt) "
    "VALUES ('delete', old.id, old.prompt, old.negative_prompt); "
    "INSERT INTO generations_fts(rowid, prompt, negative_prompt) "
    "VALUES (new.id, new.prompt, new.negative_prompt); END",
    # Index rows that may already exist (no-op on a fresh database).
    "INSERT INTO generations_fts(generations_fts) VALUES ('rebuild')",
)

FTS_DROP: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS generations_fts_au",
    "DROP TRIGGER IF EXISTS generations_fts_ad",
    "DROP TRIGGER IF EXISTS generations_fts_ai",
    "DROP TABLE IF EXISTS generations_fts",
)


def _is_sqlite() -> bool:
    """True when migrating a SQLite database."""
    return op.get_bind().dialect.name == "sqlite"


def _create_generations() -> None:
    """Create the ``generations`` table and its indexes."""
    op.create_table(
        "generations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("media_type", sa.String(16), nullable=False, server_default="image"),
        sa.Column("family", sa.String(64), nullable=False, server_default=""),
        sa.Column("model_id", sa.String(255), nullable=False, server_default=""),
        sa.Column("prompt", sa.Text(), nullable=False, server_default=""),
        sa.Column("negative_prompt", sa.Text(), nullable=False, server_default=""),
        sa.Column("seed", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("steps", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("guidance", sa.Float(), nullable=False, server_default="0"),
        sa.Column("scheduler", sa.String(64), nullable=False, server_default=""),
        sa.Column("width", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("height", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False, server_default="0"),
        sa.Column("media_path", sa.String(512), nullable=False),
        sa.Column("thumb_path", sa.String(512), nullable=True),
        sa.Column("trajectory_path", sa.String(512), nullable=True),
        sa.Column("trajectory_frames", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False, server_default="ok"),
        sa.Column("favourite", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("tags", sa.JSON(), nullable=False),
    )
    for column in _INDEXED:
        op.create_index(f"ix_generations_{column}", "generations", [column])


def _create_prompt_history() -> None:
    """Create the ``prompt_history`` table."""
    op.create_table(
        "prompt_history",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("first_used", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used", sa.DateTime(timezone=True), nullable=False),
        sa.Column("times_used", sa.Integer(), nullable=False, server_default="1"),
        sa.UniqueConstraint("text", name="uq_prompt_history_text"),
    )


def upgrade() -> None:
    """Create all gallery tables (plus the FTS5 index on SQLite)."""
    _create_generations()
    _create_prompt_history()
    if _is_sqlite():
        for statement in FTS_CREATE:
            op.execute(statement)


def downgrade() -> None:
    """Drop everything created by :func:`upgrade`."""
    if _is_sqlite():
        for statement in FTS_DROP:
            op.execute(statement)
    op.drop_table("prompt_history")
    for column in _INDEXED:
        op.drop_index(f"ix_generations_{column}", table_name="generations")
    op.drop_table("generations")
