"""Representation alignment for the transformer trainers (``--repa-weight``): REPA (Yu et al. 2025,
"Representation Alignment for Generation: Training Diffusion Transformers Is Easier Than You Think").

A diffusion / flow transformer spends much of its training learning what a pretrained image encoder
already knows. REPA adds one term to the denoising loss: the hidden states of the image tokens after an
early block (``--repa-depth``), passed through a small MLP head, should point the same way (cosine) as a
frozen encoder's features of the *clean* image at the same place. The paper aligns SiT/DiT with DINOv2
and reports the same FID in ~17x fewer steps. Here the encoder is the repo's own mini-CLIP image tower
(``assets/clip/shapes-clip``, a ModifiedResNet that reads shape at 99.9% zero-shot): its ``layer2`` (8x8,
128 channels) and ``layer3`` (4x4, 256 channels, upsampled) concatenated, resized to the transformer's
token grid. Only training changes: the head hangs on the network as ``repa_head`` (one optimizer, EMA and
checkpoint), :data:`pipelines.training.common.TRAINING_ONLY` keeps it out of exports and sample grids, and a
resume that would add or drop it is refused.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEAD = "repa_head"
TARGET = "shapes-clip layer2+layer3"
TARGET_DIM = 128 + 256
HEAD_WIDTH = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repa-weight", type=float, default=0.0,
                        help="weight of the representation-alignment loss (REPA; 0: off). Aligns the image tokens "
                             "after block --repa-depth with the mini-CLIP image tower's features of the clean image")
    parser.add_argument("--repa-depth", type=int, default=2, help="the block (1-based) whose image tokens are aligned")
    parser.add_argument("--repa-clip-dir", type=Path, default=Path("assets/clip/shapes-clip"),
                        help="the mini-CLIP whose image tower gives the targets")


def config(args: argparse.Namespace) -> dict[str, Any] | None:
    """What a checkpoint records of the alignment (None: off); a resume must ask for the same."""
    if args.repa_weight <= 0:
        return None
    return {"depth": int(args.repa_depth), "width": HEAD_WIDTH, "target": TARGET}


class Targets:
    """Frozen mini-CLIP image-tower features of renders, one per token of a ``grid`` x ``grid`` patch grid."""

    def __init__(self, clip_dir: Path, grid: int, device: torch.device) -> None:
        from pipelines import mini_clip

        self.visual = mini_clip.load_clip(Path(clip_dir)).visual.eval().requires_grad_(False).to(device)
        self.grid, self.device = int(grid), device

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        from pipelines import mini_clip

        v = self.visual
        mid = v.layer2(v.layer1(v.stem(mini_clip.images_to_tensor(images).to(self.device))))
        deep = v.layer3(mid)
        size = (self.grid, self.grid)
        feats = torch.cat([F.interpolate(mid, size=size, mode="bilinear", align_corners=False),
                           F.interpolate(deep, size=size, mode="nearest")], dim=1)
        return feats.flatten(2).transpose(1, 2)  # (B, grid * grid, TARGET_DIM), row-major like the patch tokens


def head(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(hidden, HEAD_WIDTH), nn.SiLU(), nn.Linear(HEAD_WIDTH, HEAD_WIDTH), nn.SiLU(),
                         nn.Linear(HEAD_WIDTH, TARGET_DIM))


class Alignment:
    """The REPA term of one transformer: call after the model's forward pass with the batch's clean renders."""

    def __init__(self, model: nn.Module, args: argparse.Namespace, hidden: int, grid: int,
                 device: torch.device) -> None:
        blocks = model.transformer_blocks
        if not 1 <= args.repa_depth <= len(blocks):
            raise SystemExit(f"--repa-depth must be from 1 to the number of blocks ({len(blocks)}); "
                             f"got {args.repa_depth}")
        model.add_module(HEAD, head(hidden))
        self.weight = float(args.repa_weight)
        self.targets = Targets(args.repa_clip_dir, grid, device)
        self._hidden: torch.Tensor | None = None
        blocks[args.repa_depth - 1].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
        # SD3's joint blocks return (text states, image states); DiT's blocks the image states alone
        self._hidden = output[-1] if isinstance(output, tuple) else output

    def loss(self, model: nn.Module, images: np.ndarray) -> torch.Tensor:
        """1 - mean cosine similarity between the projected image tokens and the targets (0 when aligned)."""
        if self._hidden is None:
            raise RuntimeError("REPA: no hidden states kept; call loss() after the model's forward pass")
        hidden, self._hidden = self._hidden, None
        predicted = getattr(model, HEAD)(hidden)
        target = self.targets(images)
        if predicted.shape != target.shape:
            raise RuntimeError(f"REPA: {tuple(predicted.shape)} image tokens against {tuple(target.shape)} targets")
        return 1.0 - F.cosine_similarity(predicted.float(), target, dim=-1).mean()


def setup(model: nn.Module, args: argparse.Namespace, model_cfg: dict[str, Any], device: torch.device,
          extra: dict[str, Any]) -> Alignment | None:
    """Attach the head to a diffusers transformer of config ``model_cfg`` (before the optimizer and EMA are
    made) and record the settings in ``extra``; None when ``--repa-weight`` is 0."""
    cfg = config(args)
    if cfg is None:
        return None
    extra["repa"] = json.dumps(cfg)
    hidden = int(model_cfg["num_attention_heads"]) * int(model_cfg["attention_head_dim"])
    return Alignment(model, args, hidden, int(model_cfg["sample_size"]) // int(model_cfg["patch_size"]), device)


def renders(pool: dict[str, Any], rows: Sequence[int]) -> np.ndarray:
    """The clean 64x64 renders of latent-pool rows (the pool keeps each row's recipe and jitter)."""
    from pipelines.training import latents as lat
    from pipelines.worlds import shapes

    recipes = [lat.tensor_to_recipe(pool["recipes"][int(r)], pool["jitter"][int(r)]) for r in rows]
    return np.asarray(shapes.render_batch(recipes))
