"""Gallery at scale: indexes for the file reference checks and common filters, and the change journal that
lets the startup sweep check only what changed since its last run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

- ``ix_generations_media_path`` / ``_thumb_path`` / ``_trajectory_path``: "which rows use this file?" (deleting a
  row, the startup sweep) was a full table scan per file.
- ``ix_generations_model_id_guidance``: a model with a guidance range is read from one index range.
- ``ix_generations_created_at_filters`` (replaces ``ix_generations_created_at``): a date range with other filters
  is counted from the index alone.
- ``generation_counts``: how many rows have each (model, family, media type, favourite, guidance), kept by
  triggers, so a page without text or date filters is counted by summing a few of its rows instead of reading
  up to every row.
- ``gallery_counters``: row "version" goes up with every insert, update or delete of a generation (triggers), so
  a query's total can be kept until the gallery changes (``studio.gallery.repository.CountCache``).
- ``ix_generations_id`` (SQLite): the ids in a narrow index, so a page deep inside the gallery skips small index
  entries instead of whole rows.
- ``gallery_changes``: triggers note every inserted row (its id) and every deleted row (its id and file paths),
  and a path change as both. The sweep reads and clears it (``studio.gallery.reconcile``).
- ``gallery_state``: small JSON documents by name; the sweep keeps its checkpoint there (the media folders' mtimes
  at its last run, the rows it found missing).
- ``generations_fts_terms`` (SQLite): an ``fts5vocab`` table over the FTS index, so a search's last (prefix) word
  can be spelled out as the exact terms it starts (``studio.gallery.repository.prefix_terms``).

The triggers exist on SQLite and PostgreSQL; on another database the journal stays empty and every sweep is a
full one. As 0001 notes: a later SQLite batch migration that re-creates ``generations`` drops its triggers; re-create
these with the FTS ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PATH_INDEXES = (
    ("ix_generations_media_path", ["media_path"]),
    ("ix_generations_thumb_path", ["thumb_path"]),
    ("ix_generations_trajectory_path", ["trajectory_path"]),
)
FILTER_INDEXES = (
    ("ix_generations_model_id_guidance", ["model_id", "guidance"]),
    # replaces ix_generations_created_at: a date range with other filters is counted from the index alone
    ("ix_generations_created_at_filters", ["created_at", "model_id", "family", "media_type", "guidance", "favourite"]),
)
COUNTED = ("model_id", "family", "media_type", "favourite", "guidance")  # generation_counts' key

_KEY = ", ".join(COUNTED)
_COUNT_NEW = (f"INSERT INTO generation_counts ({_KEY}, n) "
              f"VALUES ({', '.join('new.' + c for c in COUNTED)}, 1) ON CONFLICT ({_KEY}) DO UPDATE SET n = "
              "generation_counts.n + 1;")
_UNCOUNT_OLD = ("UPDATE generation_counts SET n = n - 1 WHERE "
                + " AND ".join(f"{c} = old.{c}" for c in COUNTED) + ";")

_BUMP = "UPDATE gallery_counters SET value = value + 1 WHERE name = 'version';"
_DELETED = ("INSERT INTO gallery_changes (gen_id, op, media_path, thumb_path, trajectory_path) "
            "VALUES (old.id, 'd', old.media_path, old.thumb_path, old.trajectory_path);")
_INSERTED = "INSERT INTO gallery_changes (gen_id, op) VALUES (new.id, 'i');"

SQLITE_TRIGGERS: tuple[str, ...] = (
    f"CREATE TRIGGER generations_changes_ai AFTER INSERT ON generations BEGIN {_INSERTED} {_COUNT_NEW} {_BUMP} END",
    f"CREATE TRIGGER generations_changes_ad AFTER DELETE ON generations BEGIN {_DELETED} {_UNCOUNT_OLD} {_BUMP} END",
    f"CREATE TRIGGER generations_version_au AFTER UPDATE ON generations BEGIN {_BUMP} END",
    "CREATE TRIGGER generations_changes_au AFTER UPDATE OF media_path, thumb_path, trajectory_path "
    f"ON generations BEGIN {_DELETED} {_INSERTED} END",
    f"CREATE TRIGGER generations_counts_au AFTER UPDATE OF {_KEY} ON generations BEGIN "
    f"{_UNCOUNT_OLD} {_COUNT_NEW} END",
)
SQLITE_DROP: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS generations_version_au",
    "DROP TRIGGER IF EXISTS generations_counts_au",
    "DROP TRIGGER IF EXISTS generations_changes_au",
    "DROP TRIGGER IF EXISTS generations_changes_ad",
    "DROP TRIGGER IF EXISTS generations_changes_ai",
)
POSTGRES_TRIGGERS: tuple[str, ...] = (
    "CREATE FUNCTION gallery_note_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP <> 'INSERT' THEN "
    "INSERT INTO gallery_changes (gen_id, op, media_path, thumb_path, trajectory_path) "
    "VALUES (OLD.id, 'd', OLD.media_path, OLD.thumb_path, OLD.trajectory_path); END IF; "
    "IF TG_OP <> 'DELETE' THEN INSERT INTO gallery_changes (gen_id, op) VALUES (NEW.id, 'i'); END IF; "
    "RETURN NULL; END $$",
    "CREATE FUNCTION gallery_count_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"IF TG_OP <> 'INSERT' THEN {_UNCOUNT_OLD.replace('old.', 'OLD.')} END IF; "
    f"IF TG_OP <> 'DELETE' THEN {_COUNT_NEW.replace('new.', 'NEW.')} END IF; "
    "RETURN NULL; END $$",
    "CREATE TRIGGER generations_counts AFTER INSERT OR DELETE OR UPDATE OF "
    f"{_KEY} ON generations FOR EACH ROW EXECUTE PROCEDURE gallery_count_change()",
    f"CREATE FUNCTION gallery_bump_version() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN {_BUMP} "
    "RETURN NULL; END $$",
    "CREATE TRIGGER generations_version AFTER INSERT OR DELETE OR UPDATE ON generations "
    "FOR EACH STATEMENT EXECUTE PROCEDURE gallery_bump_version()",
    "CREATE TRIGGER generations_changes_ai AFTER INSERT ON generations "
    "FOR EACH ROW EXECUTE PROCEDURE gallery_note_change()",
    "CREATE TRIGGER generations_changes_ad AFTER DELETE ON generations "
    "FOR EACH ROW EXECUTE PROCEDURE gallery_note_change()",
    "CREATE TRIGGER generations_changes_au AFTER UPDATE OF media_path, thumb_path, trajectory_path ON generations "
    "FOR EACH ROW EXECUTE PROCEDURE gallery_note_change()",
)
POSTGRES_DROP: tuple[str, ...] = (
    "DROP TRIGGER IF EXISTS generations_version ON generations",
    "DROP FUNCTION IF EXISTS gallery_bump_version()",
    "DROP TRIGGER IF EXISTS generations_counts ON generations",
    "DROP FUNCTION IF EXISTS gallery_count_change()",
    "DROP TRIGGER IF EXISTS generations_changes_au ON generations",
    "DROP TRIGGER IF EXISTS generations_changes_ad ON generations",
    "DROP TRIGGER IF EXISTS generations_changes_ai ON generations",
    "DROP FUNCTION IF EXISTS gallery_note_change()",
)


def upgrade() -> None:
    """Create the indexes, the journal, state and count tables, and the triggers that keep them."""
    for name, columns in PATH_INDEXES + FILTER_INDEXES:
        op.create_index(name, "generations", columns)
    op.drop_index("ix_generations_created_at", table_name="generations")
    op.create_table(
        "generation_counts",
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("family", sa.String(64), nullable=False),
        sa.Column("media_type", sa.String(16), nullable=False),
        sa.Column("favourite", sa.Boolean(), nullable=False),
        sa.Column("guidance", sa.Float(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(*COUNTED, name="pk_generation_counts"),
    )
    op.execute(f"INSERT INTO generation_counts ({_KEY}, n) SELECT {_KEY}, count(*) FROM generations "
               f"GROUP BY {_KEY}")
    op.create_table(
        "gallery_counters",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "gallery_changes",
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("gen_id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(1), nullable=False),
        sa.Column("media_path", sa.String(512), nullable=True),
        sa.Column("thumb_path", sa.String(512), nullable=True),
        sa.Column("trajectory_path", sa.String(512), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "gallery_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=False),
    )
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_TRIGGERS, "postgresql": POSTGRES_TRIGGERS}.get(dialect, ()):
        op.execute(statement)
    if dialect in ("sqlite", "postgresql"):  # only where triggers keep it (elsewhere: no row, no count cache)
        op.execute("INSERT INTO gallery_counters (name, value) VALUES ('version', 0)")
    if dialect == "sqlite":  # a narrow index in id order: a page deep inside the gallery skips index entries
        op.create_index("ix_generations_id", "generations", ["id"])
    if dialect == "sqlite":  # the index's terms, read by term range to spell out a prefix search's last word
        op.execute("CREATE VIRTUAL TABLE generations_fts_terms USING fts5vocab(generations_fts, instance)")


def downgrade() -> None:
    """Drop what :func:`upgrade` created."""
    dialect = op.get_bind().dialect.name
    for statement in {"sqlite": SQLITE_DROP, "postgresql": POSTGRES_DROP}.get(dialect, ()):
        op.execute(statement)
    if dialect == "sqlite":
        op.execute("DROP TABLE IF EXISTS generations_fts_terms")
    op.drop_table("gallery_state")
    op.drop_table("gallery_changes")
    op.drop_table("generation_counts")
    op.drop_table("gallery_counters")
    if dialect == "sqlite":
        op.drop_index("ix_generations_id", table_name="generations")
    op.create_index("ix_generations_created_at", "generations", ["created_at"])
    for name, _ in reversed(PATH_INDEXES + FILTER_INDEXES):
        op.drop_index(name, table_name="generations")
