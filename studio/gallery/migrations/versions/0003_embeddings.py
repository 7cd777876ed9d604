"""Embedding Map caches: per-(model, item) embeddings and projected maps.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26

``embeddings`` keeps one float32 unit vector per CLIP model (name + weights digest) and item
(image: its content-addressed media digest; text: sha256 of the text), so the map embeds only what
is new. ``projections`` keeps finished 2-D/3-D maps under a digest of the model, method, parameters
and item set, so reopening the same map is instant.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create ``embeddings`` and ``projections``."""
    op.create_table(
        "embeddings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_key", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("item_key", sa.String(64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("model_key", "kind", "item_key", name="uq_embeddings_item"),
    )
    op.create_table(
        "projections",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("coords", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` created."""
    op.drop_table("projections")
    op.drop_table("embeddings")
