"""The 2-D lab's network (:class:`MLP` with a sinusoidal time embedding) and the DDPM noise schedule."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

MODELS = ("ddpm", "flow", "reflow")
NUM_TRAIN_TIMESTEPS = 1000


def _frequencies(dim: int) -> torch.Tensor:
    half = dim // 2
    return torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)


def timestep_embedding(t: torch.Tensor, dim: int = 64, scale: float = 1000.0,
                       freqs: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sinusoidal embedding of times ``t`` in [0, 1] (Vaswani et al. 2017 / Ho et al. 2020), (B, dim).

    ``t`` is multiplied by ``scale`` first, so t in [0, 1] spans the same range as DDPM's integer
    timesteps 0..999 (the embedding of DDPM's timestep k is that of t = k / 1000).
    """
    freqs = _frequencies(dim) if freqs is None else freqs
    args = scale * t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class MLP(nn.Module):
    """``f(x, t)`` for 2-D ``x`` and ``t`` in [0, 1]: [x, emb(t)] -> ``layers`` x (Linear, SiLU) -> 2.

    The same architecture serves as the DDPM's noise predictor (t = timestep / T) and as the flow
    model's velocity field (t = flow time).
    """

    def __init__(self, hidden: int = 128, layers: int = 3, emb_dim: int = 64):
        super().__init__()
        self.emb_dim = emb_dim
        self.register_buffer("freqs", _frequencies(emb_dim), persistent=False)
        blocks: list[nn.Module] = []
        width = 2 + emb_dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        blocks.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        return self.net(torch.cat([x, timestep_embedding(t, self.emb_dim, freqs=self.freqs)], dim=-1))


def linear_alphas_cumprod(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                          beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)`` for Ho et al.'s linear betas (float64, shape (T,)).

    Same values as diffusers' ``DDPMScheduler(beta_schedule="linear")`` for T = 1000.
    """
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)
