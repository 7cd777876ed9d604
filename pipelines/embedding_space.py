"""CLIP's joint space, for the Embedding Map: embed images and texts, project, probe.

CLIP (Radford et al. 2021) trains an image tower and a text tower so that matching pairs land close
together on the unit sphere (a symmetric contrastive loss over cosine similarities scaled by a
learned temperature). This module loads any such model from disk in its real format, the builtin
``assets/clip/shapes-clip`` included:

- an open_clip folder (``open_clip_config.json`` + ``open_clip_model.safetensors``: the hub layout
  that ``open_clip.create_model_from_pretrained("local-dir:...")`` reads), or
- a transformers ``CLIPModel`` folder (``config.json`` with ``model_type`` "clip",
  ``model.safetensors``, the tokenizer and image-processor files).

Only safetensors weights are read. :func:`project` maps unit vectors to 2-D or 3-D with PCA, t-SNE
(scikit-learn) or UMAP (umap-learn); :func:`zero_shot`, :func:`compare_texts` and
:func:`nearest` are the probes the Embedding Map shows.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_CLIP_ID = "builtin/shapes-clip"
BUILTIN_CLIP_DIR = ASSETS / "clip" / "shapes-clip"
OPEN_CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
METHODS = ("pca", "tsne", "umap")
MIN_ITEMS = {"pca": 1, "tsne": 5, "umap": 5}


class EmbeddingModelError(ValueError):
    """The folder is not a CLIP model this module can load; the message says why."""


@dataclass(frozen=True)
class ClipChoice:
    id: str
    path: Path
    kind: str  # "open_clip" | "transformers"


def clip_kind(folder: Path) -> Optional[str]:
    """"open_clip", "transformers" or None: what kind of CLIP model ``folder`` holds."""
    folder = Path(folder)
    if all((folder / f).is_file() for f in OPEN_CLIP_FILES):
        return "open_clip"
    config = folder / "config.json"
    if config.is_file() and (folder / "model.safetensors").is_file():
        try:
            if json.loads(config.read_text()).get("model_type") == "clip":
                return "transformers"
        except (OSError, ValueError):
            return None
    return None


def find_clip_models(*roots: Optional[Path]) -> list[ClipChoice]:
    """The builtin mini-CLIP plus every CLIP folder up to two levels below each of ``roots``."""
    found = [ClipChoice(BUILTIN_CLIP_ID, BUILTIN_CLIP_DIR, "open_clip")] if clip_kind(BUILTIN_CLIP_DIR) else []
    for root in roots:
        if root is None or not Path(root).is_dir():
            continue
        for folder in sorted([Path(root), *Path(root).glob("*"), *Path(root).glob("*/*")]):
            kind = clip_kind(folder) if folder.is_dir() else None
            if kind:
                name = folder.relative_to(root).as_posix() or folder.name
                found.append(ClipChoice(f"local/{name}", folder, kind))
    return found


def _weights_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def text_key(text: str) -> str:
    """Cache key of a text (what the text tower sees)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def image_key(image: Image.Image) -> str:
    """Cache key of an image's pixels (mode and size included)."""
    h = hashlib.sha256(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


class ClipEmbedder:
    """Unit image and text embeddings from one CLIP model, on the CPU (or ``device``).

    ``key`` names the model *and its weights* (a digest of the safetensors file), so a cache keyed
    by it never mixes two versions of a model.
    """

    def __init__(self, choice: ClipChoice, device: str = "cpu") -> None:
        self.choice, self.id, self.device = choice, choice.id, torch.device(device)
        folder = Path(choice.path)
        if choice.kind == "open_clip":
            import open_clip

            try:
                model, self._preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder.resolve()}")
                self.tokenizer = open_clip.get_tokenizer(f"local-dir:{folder.resolve()}")
            except Exception as exc:  # noqa: BLE001 - any failure of a user's folder becomes a message
                raise EmbeddingModelError(f"{folder}: open_clip could not load it ({exc})") from exc
            self.context_length = int(self.tokenizer.context_length)
            self.image_size = int(_image_size(model.visual))
            weights = folder / OPEN_CLIP_FILES[1]
        elif choice.kind == "transformers":
            from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

            try:
                model = CLIPModel.from_pretrained(folder, use_safetensors=True)
                self.tokenizer = CLIPTokenizer.from_pretrained(folder)
                self._processor = CLIPImageProcessor.from_pretrained(folder)
            except Exception as exc:  # noqa: BLE001
                raise EmbeddingModelError(f"{folder}: transformers could not load it as a CLIPModel ({exc})") from exc
            self.context_length = int(model.config.text_config.max_position_embeddings)
            self.image_size = int(model.config.vision_config.image_size)
            weights = folder / "model.safetensors"
        else:
            raise EmbeddingModelError(f"{folder}: unknown CLIP kind {choice.kind!r}")
        self.model = model.float().eval().to(self.device)
        self.key = f"{choice.id}@{_weights_digest(weights)}"
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.detach().exp()) if scale is not None else 100.0

    # -- images -------------------------------------------------------------------------------
    def prepare(self, image: Image.Image) -> tuple[Image.Image, Optional[str]]:
        """RGB at the tower's input size, and a note when the image had to be converted or resized."""
        notes = []
        if image.mode != "RGB":
            notes.append(f"converted from {image.mode} to RGB")
            image = image.convert("RGB")
        if image.size != (self.image_size, self.image_size):
            notes.append(f"resized from {image.width}x{image.height} to {self.image_size}x{self.image_size}")
        return image, ("; ".join(notes) or None)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 256,
                     progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """(N, D) float32 unit vectors; ``progress(n_done)`` after every batch."""
        out = []
        for i in range(0, len(images), batch_size):
            batch = [self.prepare(im)[0] for im in images[i:i + batch_size]]
            if self.choice.kind == "open_clip":
                x = torch.stack([self._preprocess(im) for im in batch]).to(self.device)
                feats = self.model.encode_image(x)
            else:
                x = self._processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
                feats = _pooled(self.model.get_image_features(pixel_values=x))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
            if progress is not None:
                progress(min(i + batch_size, len(images)))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    # -- texts --------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if self.choice.kind == "open_clip":
            return self.tokenizer(list(texts))
        return self.tokenizer(list(texts), padding="max_length", truncation=True,
                              max_length=self.context_length, return_tensors="pt")["input_ids"]

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
        """(N, D) float32 unit vectors of the texts (cut at the tower's context length)."""
        out = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenize(texts[i:i + batch_size]).to(self.device)
            if self.choice.kind == "open_clip":
                feats = self.model.encode_text(ids)
            else:
                feats = _pooled(self.model.get_text_features(input_ids=ids))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    @property
    def dim(self) -> int:
        if self.choice.kind == "open_clip":
            return int(self.model.text_projection.shape[-1])
        return int(self.model.config.projection_dim)


def _image_size(visual: Any) -> int:
    size = getattr(visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _pooled(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output (projected features in ``pooler_output``); 4 a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# -- projections -----------------------------------------------------------------------------------
def project(vectors: np.ndarray, method: str, dims: int = 2, seed: int = 0,
            neighbours: int = 15, perplexity: float = 30.0) -> np.ndarray:
    """(N, dims) coordinates of (N, D) vectors by PCA, t-SNE or UMAP (cosine metric for the last two)."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}: choose one of {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise ValueError("a map has 2 or 3 dimensions")
    x = np.asarray(vectors, dtype=np.float32)
    n = len(x)
    if n < MIN_ITEMS[method]:
        raise ValueError(f"{method.upper()} needs at least {MIN_ITEMS[method]} items (the map has {n}); "
                         "PCA maps any number")
    if method == "pca":
        from sklearn.decomposition import PCA

        k = min(dims, n, x.shape[1])
        coords = PCA(n_components=k, random_state=seed).fit_transform(x) if n > 1 else np.zeros((1, k))
        return np.pad(coords, ((0, 0), (0, dims - k))).astype(np.float32)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=dims, perplexity=min(perplexity, (n - 1) / 3), metric="cosine", init="pca",
                    random_state=seed).fit_transform(x).astype(np.float32)
    import umap

    # n_jobs=2 (the parallel path) makes UMAP ignore a seed; the map is cached, so speed wins here.
    reducer = umap.UMAP(n_components=dims, n_neighbors=max(2, min(neighbours, n - 1)), metric="cosine",
                        init="spectral" if n > dims + 2 else "random", n_jobs=2)
    return reducer.fit_transform(x).astype(np.float32)


_WARM_LOCK = threading.Lock()
_WARMED = threading.Event()


def warm_up_umap(nice: int = 19) -> float:
    """Compile UMAP's numba kernels on a tiny problem, once per process; returns the seconds it took.

    umap-learn and pynndescent compile most kernels on first use and cache few of them on disk: about
    50 s on 2 CPU cores in every new process. ``launch.py`` runs this in its background warm-up thread
    (lowered priority), so the first map the user asks for only pays for its data.
    """
    import time

    with _WARM_LOCK:
        if _WARMED.is_set():
            return 0.0
        try:  # Linux: a thread has its own nice value
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (AttributeError, OSError):
            pass
        t0 = time.perf_counter()
        # Over 4,096 points: UMAP switches from exact neighbours to pynndescent, whose kernels are the bulk.
        x = np.random.default_rng(0).normal(size=(4500, 16)).astype(np.float32)
        project(x / np.linalg.norm(x, axis=1, keepdims=True), "umap", 2)
        _WARMED.set()
        return time.perf_counter() - t0


# -- probes ----------------------------------------------------------------------------------------
def zero_shot(embedder: ClipEmbedder, image_vec: np.ndarray, labels: Sequence[str],
              template: str = "{}") -> list[tuple[str, float, float]]:
    """(label, probability, cosine) per label: softmax over ``logit_scale * cos(image, text)``, as in CLIP."""
    labels = [str(l).strip() for l in labels if str(l).strip()]
    if len(labels) < 2:
        raise ValueError("give at least two labels to choose between")
    texts = [template.format(l) if "{}" in template else f"{template} {l}".strip() for l in labels]
    cos = embedder.embed_texts(texts) @ np.asarray(image_vec, np.float32)
    logits = embedder.logit_scale * cos
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    return [(l, float(p), float(c)) for l, p, c in zip(labels, probs, cos)]


def compare_texts(embedder: ClipEmbedder, a: str, b: str, c: str) -> dict[str, Any]:
    """Which of B and C embeds closer to A ("does 'red car' sit closer to 'red truck' or 'blue car'?")."""
    if not all(t.strip() for t in (a, b, c)):
        raise ValueError("fill in all three texts A, B and C")
    va, vb, vc = embedder.embed_texts([a, b, c])
    ab, ac, bc = float(va @ vb), float(va @ vc), float(vb @ vc)
    return {"cos_ab": ab, "cos_ac": ac, "cos_bc": bc, "closer": "B" if ab > ac else ("C" if ac > ab else "tie"),
            "margin": abs(ab - ac)}


def nearest(query: np.ndarray, vectors: np.ndarray, k: int = 8) -> list[tuple[int, float]]:
    """(row, cosine) of the ``k`` rows of ``vectors`` nearest the (re-normalised) query."""
    q = np.asarray(query, np.float32)
    norm = float(np.linalg.norm(q))
    if norm == 0 or not np.isfinite(norm) or len(vectors) == 0:
        return []
    sims = np.asarray(vectors, np.float32) @ (q / norm)
    order = np.argsort(-sims)[:k]
    return [(int(i), float(sims[i])) for i in order]
