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
Below a high noise level the noisy frames themselves show the motion, and a head trained there
learns to read it from them instead of from the caption (measured: after 600 steps on all timesteps its
error at t = 950 was the same under the true and the opposite direction word), so by default the term is
applied only to clips noised at t >= 900 (``--motion-aux-min-t``). The head is training-only: it rides on the network as ``motion_aux_head`` (one optimizer, EMA and checkpoint)
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
    parser.add_argument("--motion-aux-min-t", type=int, default=900,
                        help="apply it only to clips noised at t >= this: below it the frames themselves show the "
                             "motion and the head learns to read it there instead of from the caption")


def path_targets(codes: torch.Tensor, frames: int) -> torch.Tensor:
    """(B, frames, 2): each frame's offset along the path, ``direction vector x (2u - 1)``, of pool rows' codes."""
    from pipelines.worlds import motion

    vectors = torch.tensor([motion.DIRECTION_VECTORS[d] for d in motion.DIRECTIONS], dtype=torch.float32)
    u = torch.from_numpy(motion.frame_fractions(frames).astype(np.float32))
    return vectors[codes[:, 3].long()][:, None, :] * (2 * u - 1)[None, :, None]


class MotionAux:
    """Hook on ``model.mid_block``; ``loss(model, codes, frames)`` after the model's forward pass."""

    def __init__(self, model: nn.Module, weight: float, features: int, min_t: int = 0) -> None:
        model.add_module(HEAD, nn.Sequential(nn.Linear(features, HEAD_WIDTH), nn.SiLU(), nn.Linear(HEAD_WIDTH, 2)))
        self.weight, self.min_t = float(weight), int(min_t)
        self._features: torch.Tensor | None = None
        model.mid_block.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
        self._features = output[0] if isinstance(output, tuple) else output

    def loss(self, model: nn.Module, codes: torch.Tensor, frames: int, t: torch.Tensor) -> torch.Tensor | None:
        """MSE between each frame's predicted and true place along the path, over the clips noised at
        t >= ``min_t`` (None when there are none); the frames of clip ``i`` are the batch's rows ``i * frames...``."""
        if self._features is None:
            raise RuntimeError("motion aux: no features kept; call loss() after the model's forward pass")
        feats, self._features = self._features, None
        keep = (t >= self.min_t).to(feats.device)
        if not bool(keep.any()):
            return None
        predicted = getattr(model, HEAD)(feats.view(len(keep), frames, -1)[keep].float()).view(-1, frames, 2)
        return F.mse_loss(predicted, path_targets(codes[keep.cpu()], frames).to(predicted.device))


def setup(model: nn.Module, args: argparse.Namespace, latent_size: int) -> MotionAux | None:
    """Attach the head (before the optimizer and EMA are made) to a ``UNetMotionModel`` over latents
    ``latent_size`` wide; None when ``--motion-aux-weight`` is 0."""
    if args.motion_aux_weight <= 0:
        return None
    side = latent_size // 2 ** (len(model.down_blocks) - 1)  # the mid block's resolution
    channels = int(model.mid_block.resnets[-1].out_channels)
    return MotionAux(model, args.motion_aux_weight, channels * side * side, args.motion_aux_min_t)
