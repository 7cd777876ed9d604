"""The Embedding Map's caches in the gallery database: embeddings per (model, item), finished maps.

Items are keyed by content, not by row: an image by the digest in its content-addressed media path,
a text by the sha256 of the text. So a prompt used a hundred times is embedded once, a deleted and
re-made image is not embedded again, and a new version of a model (another weights digest in its
``model_key``) never reads an old version's vectors.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from studio.gallery.models import EmbeddingRow, ProjectionRow
from studio.gallery.service import Gallery

_CHUNK = 500  # keys per IN (...) query, well under SQLite's variable limit


class EmbeddingCache:
    def __init__(self, gallery: Gallery) -> None:
        self.gallery = gallery

    def get(self, model_key: str, kind: str, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """The cached vectors among ``keys`` (missing keys are simply absent)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, np.ndarray] = {}
        with self.gallery.session() as s:
            for i in range(0, len(wanted), _CHUNK):
                rows = s.execute(select(EmbeddingRow.item_key, EmbeddingRow.vector).where(
                    EmbeddingRow.model_key == model_key, EmbeddingRow.kind == kind,
                    EmbeddingRow.item_key.in_(wanted[i:i + _CHUNK])))
                for key, blob in rows:
                    found[key] = np.frombuffer(blob, dtype="<f4").copy()
        return found

    def put(self, model_key: str, kind: str, vectors: Mapping[str, np.ndarray]) -> int:
        """Store vectors not cached yet; returns how many were written (a concurrent writer's copy wins)."""
        cached = self.get(model_key, kind, vectors)
        todo = {k: v for k, v in vectors.items() if k not in cached}
        if not todo:
            return 0
        rows = [EmbeddingRow(model_key=model_key, kind=kind, item_key=k, dim=int(v.shape[-1]),
                             vector=np.asarray(v, dtype="<f4").tobytes()) for k, v in todo.items()]
        try:
            with self.gallery.session() as s:
                s.add_all(rows)
        except IntegrityError:  # another session cached some of them first: keep theirs, add the rest
            written = 0
            for row in rows:
                try:
                    with self.gallery.session() as s:
                        s.add(EmbeddingRow(model_key=row.model_key, kind=kind, item_key=row.item_key,
                                           dim=row.dim, vector=row.vector))
                    written += 1
                except IntegrityError:
                    pass
            return written
        return len(rows)

    def count(self, model_key: str | None = None) -> int:
        from sqlalchemy import func

        with self.gallery.session() as s:
            q = select(func.count()).select_from(EmbeddingRow)
            if model_key is not None:
                q = q.where(EmbeddingRow.model_key == model_key)
            return int(s.scalar(q) or 0)

    # -- finished maps ----------------------------------------------------------------------------
    def get_projection(self, key: str) -> np.ndarray | None:
        with self.gallery.session() as s:
            row = s.get(ProjectionRow, key)
            if row is None:
                return None
            return np.frombuffer(row.coords, dtype="<f4").reshape(row.n, row.dims).copy()

    def put_projection(self, key: str, coords: np.ndarray, keep: int = 50) -> None:
        """Store a map; only the ``keep`` newest maps are kept (old item sets are never asked again)."""
        coords = np.asarray(coords, dtype="<f4")
        with self.gallery.session() as s:
            s.merge(ProjectionRow(key=key, n=int(coords.shape[0]), dims=int(coords.shape[1]),
                                  coords=coords.tobytes()))
        with self.gallery.session() as s:
            old = s.scalars(select(ProjectionRow.key).order_by(ProjectionRow.created_at.desc()).offset(keep)).all()
            if old:
                s.execute(delete(ProjectionRow).where(ProjectionRow.key.in_(old)))
