"""The Embedding Map's work, without the UI: gather gallery items, embed what is new, project, judge.

A map shows every image generation of the gallery (its pixels through the CLIP image tower), every
distinct prompt (through the text tower), and texts and images the user adds on the spot, in one
joint space. Embeddings come from :class:`studio.gallery.embeddings.EmbeddingCache` when present
and are computed (and stored) only for new items; a finished map is stored under a digest of the
model, method, parameters and item set, so opening the same map again is instant.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image
from sqlalchemy import select

from pipelines import embedding_space as es

from .gallery import Gallery
from .gallery.embeddings import EmbeddingCache
from .gallery.models import Generation

Progress = Callable[[float, str], None]
COLOUR_BY = ("family", "model", "guidance", "media type", "kind", "judged colour", "judged shape",
             "prompt followed (judge)")
JUDGED = {"judged colour": "colour", "judged shape": "shape"}
EMBED_MAX_SIDE = 256  # images up to this size are embedded from the lossless file, larger ones from the thumbnail

log = logging.getLogger(__name__)


@dataclass
class MapPoint:
    kind: str  # "image" | "prompt" | "text" (added) | "upload" (added image)
    key: str  # cache key: media digest (images) or sha256 of the text
    label: str  # the prompt (images, prompts) or the added text / file name
    gen_id: Optional[int] = None
    family: str = ""
    model_id: str = ""
    media_type: str = ""
    guidance: Optional[float] = None
    path: Optional[Path] = None  # image file embedded
    thumb: Optional[Path] = None  # image file shown on hover
    prompt_key: Optional[str] = None  # the prompt point this image was made from

    @property
    def cache_kind(self) -> str:
        return "image" if self.kind in ("image", "upload") else "text"


@dataclass
class MapResult:
    model_id: str
    method: str
    dims: int
    points: list[MapPoint]
    coords: np.ndarray  # (len(points), dims)
    vectors: np.ndarray  # (len(points), D) unit embeddings
    stats: dict[str, Any] = field(default_factory=dict)


def _media_digest(rel: str) -> str:
    """The content digest of a content-addressed media path (``media/aa/<sha256>.png``)."""
    return Path(rel).stem


class EmbeddingMapService:
    def __init__(self, gallery: Gallery, clip_roots: Sequence[Optional[Path]] = (), device: str = "cpu") -> None:
        self.gallery, self.cache = gallery, EmbeddingCache(gallery)
        self.clip_roots, self.device = list(clip_roots), device
        self._embedders: dict[str, es.ClipEmbedder] = {}
        self._lock = threading.Lock()
        self._judged: dict[str, dict[str, Optional[str]]] = {}
        self._last: dict[tuple, MapResult] = {}  # the newest map per request, while the gallery is unchanged

    # -- models ------------------------------------------------------------------------------------
    def choices(self) -> list[str]:
        return [c.id for c in es.find_clip_models(*self.clip_roots)]

    def embedder(self, model_id: str) -> es.ClipEmbedder:
        with self._lock:
            if model_id not in self._embedders:
                choice = next((c for c in es.find_clip_models(*self.clip_roots) if c.id == model_id), None)
                if choice is None:
                    raise es.EmbeddingModelError(f"No CLIP model {model_id!r}: choose one of {', '.join(self.choices())}")
                self._embedders[model_id] = es.ClipEmbedder(choice, self.device)
            return self._embedders[model_id]

    # -- items -------------------------------------------------------------------------------------
    def gallery_points(self, include_prompts: bool = True, limit: Optional[int] = None) -> list[MapPoint]:
        """Image points for finished image generations (newest first) plus one point per distinct prompt."""
        cols = (Generation.id, Generation.media_type, Generation.family, Generation.model_id, Generation.prompt,
                Generation.guidance, Generation.width, Generation.height, Generation.media_path, Generation.thumb_path)
        q = select(*cols).where(Generation.status == "ok").order_by(Generation.id.desc())
        if limit:
            q = q.limit(limit)
        with self.gallery.session() as s:
            rows = s.execute(q).all()
        points: list[MapPoint] = []
        prompts: dict[str, MapPoint] = {}
        for gid, media, family, model_id, prompt, guidance, w, h, media_path, thumb_path in rows:
            pkey = es.text_key(prompt or "")
            if include_prompts and pkey not in prompts:
                prompts[pkey] = MapPoint("prompt", pkey, prompt or "", gid, family, model_id, media, guidance)
            if media != "image":
                continue  # audio and video rows are mapped by their prompts
            source = media_path if max(w or 0, h or 0) <= EMBED_MAX_SIDE or not thumb_path else thumb_path
            points.append(MapPoint("image", _media_digest(source), prompt or "", gid, family, model_id, media,
                                   guidance, self.gallery.store.resolve_listed(source),
                                   self.gallery.store.resolve_listed(thumb_path or media_path),
                                   pkey if include_prompts else None))
        return points + list(prompts.values())

    @staticmethod
    def added_points(texts: Sequence[str] = (), images: Sequence[tuple[str, Image.Image]] = ()) -> list[MapPoint]:
        points = [MapPoint("text", es.text_key(t), t) for t in dict.fromkeys(t.strip() for t in texts) if t]
        for name, image in images:
            points.append(MapPoint("upload", es.image_key(image), name, path=None))
        return points

    # -- embeddings --------------------------------------------------------------------------------
    def embed(self, embedder: es.ClipEmbedder, points: Sequence[MapPoint],
              uploads: Optional[dict[str, Image.Image]] = None,
              progress: Optional[Progress] = None) -> tuple[list[MapPoint], np.ndarray, dict[str, Any]]:
        """(the points kept, their (n, D) vectors, stats); only items missing from the cache go through the towers.
        An image whose file cannot be read (missing, truncated) is left out and counted in ``stats["unreadable"]``,
        so one damaged file never stops the map."""
        uploads = uploads or {}
        vectors: dict[tuple[str, str], np.ndarray] = {}
        stats: dict[str, Any] = {"reused": 0, "embedded": 0, "unreadable": 0}
        bad: set[str] = set()
        for kind in ("image", "text"):
            keys = list(dict.fromkeys(p.key for p in points if p.cache_kind == kind))
            cached = self.cache.get(embedder.key, kind, keys)
            vectors.update({(kind, k): v for k, v in cached.items()})
            stats["reused"] += len(cached)
            missing = [k for k in keys if k not in cached]
            if not missing:
                continue
            fresh: dict[str, np.ndarray] = {}
            if kind == "text":
                label = {p.key: p.label for p in points if p.cache_kind == "text"}
                for i in range(0, len(missing), 512):
                    chunk = missing[i:i + 512]
                    fresh.update(zip(chunk, embedder.embed_texts([label[k] for k in chunk])))
                    _report(progress, len(fresh) / len(missing), f"embedding {len(missing)} texts")
            else:
                where = {p.key: p for p in points if p.cache_kind == "image"}
                for i in range(0, len(missing), 256):
                    loaded = []
                    for k in missing[i:i + 256]:
                        try:
                            loaded.append((k, uploads[k] if k in uploads else _load_rgb(where[k].path)))
                        except (OSError, ValueError) as exc:  # PIL raises OSError for truncated files
                            log.warning("embedding map: leaving out %s (%s)", where[k].path, exc)
                            bad.add(k)
                    if loaded:
                        fresh.update(zip([k for k, _ in loaded], embedder.embed_images([im for _, im in loaded])))
                    _report(progress, len(fresh) / len(missing), f"embedding {len(missing)} images")
            self.cache.put(embedder.key, kind, fresh)
            vectors.update({(kind, k): v for k, v in fresh.items()})
            stats["embedded"] += len(fresh)
        kept = [p for p in points if not (p.cache_kind == "image" and p.key in bad)]
        stats["unreadable"] = len(points) - len(kept)
        if not kept:
            return kept, np.zeros((0, embedder.dim), np.float32), stats
        return kept, np.stack([vectors[(p.cache_kind, p.key)] for p in kept]), stats

    # -- maps ----------------------------------------------------------------------------------------
    def build_map(self, model_id: str, method: str = "umap", dims: int = 2, include_prompts: bool = True,
                  texts: Sequence[str] = (), images: Sequence[tuple[str, Image.Image]] = (),
                  limit: Optional[int] = None, progress: Optional[Progress] = None) -> MapResult:
        t0 = time.perf_counter()
        _report(progress, 0.0, f"loading {model_id}")
        embedder = self.embedder(model_id)
        # Same request, same gallery (rows are only added or deleted): the map already built in this
        # process, without reading the gallery again.
        request = (embedder.key, method, dims, include_prompts, limit, tuple(texts),
                   tuple(es.image_key(im) for _, im in images), self._gallery_version())
        if request in self._last:
            hit = self._last[request]
            stats = {**hit.stats, "embedded": 0, "reused": hit.stats["distinct"], "projection_cached": True,
                     "embed_seconds": 0.0, "seconds": round(time.perf_counter() - t0, 3)}
            return MapResult(hit.model_id, hit.method, hit.dims, hit.points, hit.coords, hit.vectors, stats)
        points = self.gallery_points(include_prompts, limit) + self.added_points(texts, images)
        if not points:
            raise ValueError("The map is empty: the gallery has no generations yet. Generate a few images "
                             "(Generate tab), or add texts or images below, then build the map.")
        uploads = {es.image_key(im): im for _, im in images}
        points, vectors, stats = self.embed(embedder, points, uploads, progress)
        if not points:
            raise ValueError("No item of the map could be read: every image file is missing or damaged.")
        t_embed = time.perf_counter() - t0
        # Project each distinct item once (a prompt used by many rows is one point in the space).
        slots = {k: i for i, k in enumerate(dict.fromkeys((p.cache_kind, p.key) for p in points))}
        unique = np.zeros((len(slots), vectors.shape[1]), np.float32)
        for p, v in zip(points, vectors):
            unique[slots[(p.cache_kind, p.key)]] = v
        digest = hashlib.sha256(f"{embedder.key}|{method}|{dims}|".encode())
        for kind, key in slots:
            digest.update(f"{kind}:{key}\n".encode())
        coords = self.cache.get_projection(digest.hexdigest())
        cached = coords is not None and coords.shape == (len(slots), dims)
        if not cached:
            _report(progress, 0.9, f"{method.upper()} of {len(slots)} items")
            coords = es.project(unique, method, dims)
            self.cache.put_projection(digest.hexdigest(), coords)
        per_point = np.stack([coords[slots[(p.cache_kind, p.key)]] for p in points])
        stats.update({"items": len(points), "distinct": len(slots), "projection_cached": bool(cached),
                      "embed_seconds": round(t_embed, 2), "seconds": round(time.perf_counter() - t0, 2)})
        result = MapResult(model_id, method, dims, points, per_point, vectors, stats)
        self._last = {request: result}
        return result

    def _gallery_version(self) -> tuple[int, int, str]:
        """Row count, newest id and newest creation time: any insert or delete changes one of them
        (SQLite may reuse the id of a deleted newest row, never its creation time)."""
        from sqlalchemy import func

        with self.gallery.session() as s:
            count, newest, created = s.execute(select(func.count(Generation.id), func.max(Generation.id),
                                                      func.max(Generation.created_at))).one()
        return int(count or 0), int(newest or 0), str(created)

    # -- judged attributes ---------------------------------------------------------------------------
    def judged(self, point: MapPoint) -> dict[str, Optional[str]]:
        """The Shapes judge's reading of an image point (cached by content), and whether it followed its prompt."""
        from pipelines.judges import shapes as judge
        from pipelines.worlds.shapes import parse_prompt

        if point.kind not in ("image",) or point.path is None:
            return {}
        if point.key not in self._judged:
            seen = judge.describe(_load_rgb(point.path))
            wanted = parse_prompt(point.label)
            ok = None if not wanted else ("yes" if all(seen.get(k) == v for k, v in wanted.items()) else "no")
            self._judged[point.key] = {**seen, "followed": ok}
        return self._judged[point.key]

    def category(self, point: MapPoint, colour_by: str) -> Any:
        """The value ``colour_by`` gives a point (None: not applicable)."""
        if colour_by == "family":
            return point.family or ("added" if point.gen_id is None else "")
        if colour_by == "model":
            return point.model_id or ("added" if point.gen_id is None else "")
        if colour_by == "guidance":
            return point.guidance
        if colour_by == "media type":
            return point.media_type or "added"
        if colour_by == "kind":
            return point.kind
        if colour_by in JUDGED:
            return self.judged(point).get(JUDGED[colour_by]) or ("no object" if point.kind == "image" else None)
        if colour_by == "prompt followed (judge)":
            return self.judged(point).get("followed") or ("not a Shapes prompt" if point.kind == "image" else None)
        raise ValueError(f"unknown colouring {colour_by!r}: choose one of {', '.join(COLOUR_BY)}")


_SHARED: dict[int, EmbeddingMapService] = {}


def shared_service(gallery: Gallery, models_dir: Optional[Path], device: str = "cpu") -> EmbeddingMapService:
    """One service per gallery, so the Embedding Map and the Tokenizer Viewer load each CLIP model once."""
    key = id(gallery)
    if key not in _SHARED or _SHARED[key].gallery is not gallery:
        _SHARED[key] = EmbeddingMapService(gallery, [models_dir], device)
    return _SHARED[key]


def _load_rgb(path: Optional[Path]) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _report(progress: Optional[Progress], fraction: float, desc: str) -> None:
    if progress is not None:
        progress(min(max(fraction, 0.0), 1.0), desc)
