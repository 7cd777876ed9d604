"""One training step's data for ``python -m pipelines.train ldm``: pool rows, caption rows, noise and timesteps,
drawn from ``(seed, step, stream)`` alone, so runs are resume-exact on any device and process count."""
from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from pipelines.training import common, latents as lat


def sample_captions(pool: dict[str, Any], rows: np.ndarray, rng: np.random.Generator, drop_prob: float,
                    uncond_prob: float) -> list[str]:
    """Fresh captions for pool rows: attributes dropped at random, some replaced by ""."""
    from pipelines.worlds import shapes

    out = []
    for r in rows:
        text = shapes.caption(lat.tensor_to_recipe(pool["recipes"][r]), rng, drop_prob)
        out.append("" if rng.random() < uncond_prob else text)
    return out



class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = that step's batch, drawn from ``step_rng(seed, step)`` alone (resume-exact).

    Returns pool rows, caption-table rows, noise (offset noise included) and timesteps, all made on
    the CPU with the same generator calls whatever the device, so a run can move between CPU and
    GPU and see the same data; workers of a ``DataLoader`` can prepare steps ahead.

    Several processes (``rank``) and gradient accumulation (``accum`` micro-batches a step): item
    ``step * accum + micro`` is drawn from ``step_rng(seed, step, stream=rank * accum + micro)``, so every
    process and micro-batch gets its own batch; rank 0's only micro-batch is the single-process one.
    """

    def __init__(self, pool: dict[str, Any], table_rows: dict[str, int], args: argparse.Namespace,
                 num_train_timesteps: int, rank: int = 0, accum: int = 1) -> None:
        self.pool = {"recipes": pool["recipes"]}
        self.rows, self.args, self.T = table_rows, args, num_train_timesteps
        self.n, self.shape = len(pool["latents"]), tuple(pool["latents"].shape[1:])
        self.rank, self.accum = int(rank), max(1, int(accum))

    def __len__(self) -> int:
        return int(self.args.steps) * self.accum

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.args
        step, micro = divmod(int(index), self.accum)
        rng = common.step_rng(a.seed, step, stream=self.rank * self.accum + micro)
        rows = rng.integers(self.n, size=a.batch_size)
        captions = sample_captions(self.pool, rows, rng, a.drop_prob, a.uncond_prob)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn((a.batch_size, *self.shape), generator=gen)
        t = torch.randint(0, self.T, (a.batch_size,), generator=gen)
        if a.offset_noise > 0:  # drawn after t, so runs without it see the same noise and timesteps
            noise = noise + a.offset_noise * torch.randn(a.batch_size, self.shape[0], 1, 1, generator=gen)
        return torch.from_numpy(rows), torch.tensor([self.rows[c] for c in captions]), noise, t
