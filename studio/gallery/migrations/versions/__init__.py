"""Alembic revision scripts for the gallery (ignored by Alembic itself)."""
