"""Alembic migration environment for the studio gallery database.

Run through :func:`studio.gallery.service.run_migrations`; no ``alembic.ini``
is needed.
"""
