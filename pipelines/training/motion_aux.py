"""An auxiliary motion target for the video trainer (``--motion-aux-weight``), in the spirit of VideoJAM (Chefer et
al. 2025, "VideoJAM: Joint Appearance-Motion Representations for Enhanced Motion Generation in Video Models"):
a pixel (here latent) denoising loss leaves a video model nearly blind to motion, and asking its features to
also predict the motion fixes much of that.

The motion-ldm measurements (README, "Builtin video model") found a saddle: across the Motion world's
directions the data is time-symmetric, so frame order pays off only for a model that reads the direction
word and the direction word only for one that knows frame order, and the denoising gradient for either is
close to zero. This term pays for both at once. A small head reads each frame's features after the UNet's
mid block and predicts where that frame sits along the clip's path: ``direction vector x (2u - 1)`` for the
frame at fraction ``u`` of the clip (left/right/up/down; zero for "still"), a target that needs the caption
(at high noise the noisy frames hold no direction) *and* the frame's place in time (from the motion modules).
The head is training-only: it rides on the network as ``motion_aux_head`` (one optimizer, EMA and checkpoint)
and :data:`pipelines.training.common.TRAINING_ONLY` keeps it out of the packed pipeline.
"""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HEAD = "motion_aux_head"
HEAD_WIDTH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--motion-aux-weight", type=float, default=0.0,
                        help="weight of an auxiliary loss: a head on the mid block's features predicts each "
                             "frame's place along the clip's path (direction x time; 0: off). Pays for reading "
                             "the direction word and the frame order at once")


def path_targets(codes: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames, 2): each frame's offset along the path, ``direction vector x (2u - 1)``, of pool rows' codes."""
    from pipelines.worlds import motion

    vectors = torch.tensor([motion.DIRECTION_VECTORS[d] for d in motion.DIRECTIONS], dtype=torch.float32)
    u = torch.from_numpy(motion.frame_fractions(frames).astype(np.float32))
    return vectors[codes[:, 3].long()][:, None, :] * (2 * u - 1)[None, :, None]


class MotionAux:
    """Hook on ``model.mid_block``; ``loss(model, codes, frames)`` after the model's forward pass."""

    def __init__(self, model: nn.Module, weight: float, features: int) -> None:
        model.add_module(HEAD, nn.Sequential(nn.Linear(features, HEAD_WIDTH), nn.SiLU(), nn.Linear(HEAD_WIDTH, 2)))
        self.weight = float(weight)
        self._features: torch.Tensor | None = None
        model.mid_block.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._features = output[0] if isinstance(output, tuple) else output

    def loss(self, model: nn.Module, codes: torch.Tensor, frames: int) -> torch.Tensor:
        """MSE between each frame's predicted and true place along the path (frames are the batch's rows)."""
        if self._features is None:
            raise RuntimeError("motion aux: no features kept; call loss() after the model's forward pass")
        feats, self._features = self._features, None
        predicted = getattr(model, HEAD)(feats.flatten(1).float()).view(-1, frames, 2)
        return F.mse_loss(predicted, path_targets(codes, frames).to(predicted.device))


def setup(model: nn.Module, args: argparse.Namespace, latent_size: int) -> MotionAux | None:
    """Attach the head (before the optimizer and EMA are made) to a ``UNetMotionModel`` over latents
    ``latent_size`` wide; None when ``--motion-aux-weight`` is 0."""
    if args.motion_aux_weight <= 0:
        return None
    side = latent_size // 2 ** (len(model.down_blocks) - 1)  # the mid block's resolution
    channels = int(model.mid_block.resnets[-1].out_channels)
    return MotionAux(model, args.motion_aux_weight, channels * side * side)
