"""``test_gallery_sweep`` against a real PostgreSQL server (see ``postgres_rerun``)."""
from .postgres_rerun import _on_postgres  # noqa: F401  (autouse: every gallery of these tests on PostgreSQL)
from .test_gallery_sweep import *  # noqa: F401,F403  (the same tests, collected again here)
