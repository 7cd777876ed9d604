"""Cached inputs of latent-diffusion training: VAE latents of a recipe pool, caption embeddings.

Latent diffusion (Rombach et al. 2022) trains the denoiser on ``scaling_factor * E(x)`` of a
frozen autoencoder, so the encodings of a fixed pool of renders are computed once. The pool keeps
each render's recipe (not a caption), so captions can be re-sampled with random attribute dropping
at every step. The text encoder is frozen too, and every caption of the Shapes grammar (at most
~5k strings) is encoded once, exactly as ``StableDiffusionPipeline.encode_prompt`` does it
(``padding="max_length"``, ``max_length=model_max_length``, ``truncation``, ``text_encoder(ids)[0]``
on the fp32-loaded saved encoder), so training sees bit-identical conditioning to sampling.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

_FIELDS = ("colour", "shape", "size", "position", "background")


def _vocab() -> dict[str, list[str]]:
    from pipelines.worlds import shapes

    return {"colour": list(shapes.COLOURS), "shape": list(shapes.SHAPES), "size": list(shapes.SIZES),
            "position": list(shapes.POSITIONS), "background": list(shapes.BACKGROUNDS)}


def recipes_to_tensor(recipes: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribute indices (N, 5) int16 and jitter (N, 2) float32 of ``ShapeRecipe`` s."""
    vocab = _vocab()
    idx = torch.tensor([[vocab[f].index(getattr(r, f)) for f in _FIELDS] for r in recipes], dtype=torch.int16)
    jitter = torch.tensor([[r.dx, r.dy] for r in recipes], dtype=torch.float32)
    return idx, jitter


def tensor_to_recipe(idx: torch.Tensor | np.ndarray, jitter: torch.Tensor | np.ndarray | None = None) -> Any:
    """The ``ShapeRecipe`` of one row of :func:`recipes_to_tensor`."""
    from pipelines.worlds import shapes

    vocab = _vocab()
    names = [vocab[f][int(i)] for f, i in zip(_FIELDS, idx)]
    dx, dy = (float(jitter[0]), float(jitter[1])) if jitter is not None else (0.0, 0.0)
    return shapes.ShapeRecipe(*names, dx=dx, dy=dy)


@torch.no_grad()
def build_latent_pool(vae_dir: Path, out: Path, n: int, seed: int, chunk: int = 512,
                      device: torch.device | str = "cpu", workers: int = 0) -> Path:
    """Encode ``n`` training renders (hold-out pairs excluded); save latents (scaled, fp16) + recipes.

    ``workers`` > 0 renders in that many processes; ``device`` runs the encoder (the posterior
    mean is taken, so the pool does not depend on any sampling noise).
    """
    from diffusers import AutoencoderKL

    from pipelines.training.common import progress
    from pipelines.training.vae import to_tensor
    from pipelines.worlds import shapes

    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True).eval().to(device)
    factor = float(vae.config.scaling_factor)
    rng = np.random.default_rng(seed)
    recipes = [shapes.sample_recipe(rng, holdout="exclude") for _ in range(n)]
    chunks = [recipes[i:i + chunk] for i in range(0, n, chunk)]
    latents = []
    bar = progress(n, desc="latents")
    with contextlib.ExitStack() as stack:
        if workers > 0:
            import multiprocessing

            renders = stack.enter_context(multiprocessing.get_context("fork").Pool(workers)).imap(
                shapes.render_batch, chunks)
        else:
            renders = map(shapes.render_batch, chunks)
        for images in renders:
            x = to_tensor(images).to(device)
            latents.append((vae.encode(x).latent_dist.mean * factor).half().cpu())
            bar.update(len(x))
    bar.close()
    idx, jitter = recipes_to_tensor(recipes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"latents": torch.cat(latents), "recipes": idx, "jitter": jitter,
                "scaling_factor": factor, "seed": seed, "vae_hash": file_hash(vae_dir)}, tmp)
    tmp.replace(out)
    return out


def load_latent_pool(path: Path) -> dict[str, Any]:
    """What :func:`build_latent_pool` saved (``weights_only`` loading)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def file_hash(folder: Path) -> str:
    """sha256 over a model folder's safetensors files (identifies the exact weights)."""
    h = hashlib.sha256()
    for f in sorted(Path(folder).rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def all_captions(include_holdout: bool = False) -> list[str]:
    """Every caption :func:`shapes.caption` can produce (full and with parts dropped), plus ""."""
    from pipelines.worlds import shapes

    out = [""]
    for colour, shape in itertools.product(shapes.COLOURS, shapes.SHAPES):
        if (colour, shape) in shapes.HOLDOUT_PAIRS and not include_holdout:
            continue
        for size, pos, bg in itertools.product([None, *shapes.SIZES], [None, *shapes.POSITIONS],
                                               [None, *shapes.BACKGROUNDS]):
            recipe = shapes.ShapeRecipe(colour, shape, size or "small", pos or "center", bg or "white")
            keep = iter([size is not None, pos is not None, bg is not None])

            class _Keep:  # replays the keep flags through shapes.caption's own logic
                @staticmethod
                def random() -> float:
                    return 1.0 if next(keep) else 0.0

            out.append(shapes.caption(recipe, _Keep(), drop_prob=0.5))  # type: ignore[arg-type]
    return out


def prompt_ids(tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (N, L) of ``prompts``, padded and cut to the tokenizer's length as the SD pipeline does."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompts(text_dir: Path, tokenizer_dir: Path, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Per-token hidden states (N, L, D) exactly as the SD pipeline computes prompt embeddings."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    encoder = CLIPTextModel.from_pretrained(text_dir, dtype=torch.float32, use_safetensors=True).eval()
    out = [encoder(prompt_ids(tokenizer, prompts[i:i + batch_size]))[0].float()
           for i in range(0, len(prompts), batch_size)]
    return torch.cat(out)


class CaptionTable:
    """Caption string -> row of a precomputed embedding table (built from a saved text encoder)."""

    def __init__(self, captions: list[str], embeddings: torch.Tensor) -> None:
        self.rows = {c: i for i, c in enumerate(captions)}
        self.captions, self.embeddings = captions, embeddings

    @classmethod
    def build(cls, text_dir: Path, tokenizer_dir: Path, cache: Path | None = None) -> "CaptionTable":
        """Encode :func:`all_captions` (or reload them from ``cache`` when the encoder matches)."""
        key = file_hash(text_dir)
        if cache is not None and cache.is_file():
            state = torch.load(cache, map_location="cpu", weights_only=True)
            if state.get("text_hash") == key:
                return cls(list(state["captions"]), state["embeddings"])
        captions = all_captions()
        table = cls(captions, encode_prompts(text_dir, tokenizer_dir, captions))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"text_hash": key, "captions": captions, "embeddings": table.embeddings}, cache)
        return table

    def lookup(self, captions: Sequence[str]) -> torch.Tensor:
        """Embeddings (B, L, D) of ``captions`` (all must be in the table)."""
        return self.embeddings[torch.tensor([self.rows[c] for c in captions])]
