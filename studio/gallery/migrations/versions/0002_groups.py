"""Generation groups: a guidance sweep (or any multi-image study) saved as one unit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

``generation_groups`` holds the study's settings and measured summary (JSON); each member
stays a normal ``generations`` row that points at its group through ``group_id``. SQLite's
ALTER TABLE ADD COLUMN keeps the table (and its FTS triggers) in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``generation_groups`` and link generations to it."""
    op.create_table(
        "generation_groups",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("title", sa.Text(), nullable=False, server_default=""),
        sa.Column("model_id", sa.String(255), nullable=False, server_default=""),
        sa.Column("prompt", sa.Text(), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False, server_default="running"),
        sa.Column("data", sa.JSON(), nullable=False),
    )
    op.create_index("ix_generation_groups_created_at", "generation_groups", ["created_at"])
    op.create_index("ix_generation_groups_kind", "generation_groups", ["kind"])
    op.add_column("generations", sa.Column("group_id", sa.Integer(), nullable=True))
    op.create_index("ix_generations_group_id", "generations", ["group_id"])


def downgrade() -> None:
    """Drop what :func:`upgrade` created."""
    op.drop_index("ix_generations_group_id", table_name="generations")
    with op.batch_alter_table("generations") as batch:
        batch.drop_column("group_id")
    op.drop_index("ix_generation_groups_kind", table_name="generation_groups")
    op.drop_index("ix_generation_groups_created_at", table_name="generation_groups")
    op.drop_table("generation_groups")
