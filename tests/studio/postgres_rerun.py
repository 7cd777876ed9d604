"""Runs gallery test modules again against a real PostgreSQL server (tests/postgres.py): each rerun module imports
this autouse fixture and one gallery test module's tests (one module each, so their same-named fixtures do not
collide). Every ``Gallery.open`` of a test gets a database of its own on the server (one per gallery folder, so a
reopen finds its rows); search falls back from SQLite's FTS5 to ILIKE. Tests about SQLite files themselves are
not repeated."""
from __future__ import annotations

import itertools

import pytest

from studio.gallery import service

SQLITE_ONLY = {  # test name: why it is about SQLite itself
    "test_corrupt_database_raises_gallery_error": "writes garbage into the SQLite file",
    "test_the_command_line_round_trip": "the CLI runs in another process, on SQLite files",
}
_numbers = itertools.count()


@pytest.fixture(autouse=True)
def _on_postgres(request, postgres, monkeypatch):
    if request.node.originalname in SQLITE_ONLY:
        pytest.skip(SQLITE_ONLY[request.node.originalname])
    opened: dict[str, str] = {}
    original = service.Gallery.open.__func__

    def open_on_postgres(cls, root, db_url=None):
        if db_url is None:
            key = str(root)
            if key not in opened:
                opened[key] = postgres.create_database(f"g{next(_numbers)}")
            db_url = opened[key]
        return original(cls, root, db_url)

    monkeypatch.setattr(service.Gallery, "open", classmethod(open_on_postgres))
