"""Sampling the 2-D lab's models (:func:`sample`: the DDPM's ancestral sampler or DDIM for the DDPM, Euler for the
flows, every state recorded; :data:`ROWS`, the model/sampler pairs the lab compares) and the measures of what comes out (:func:`straightness` of trajectories, :func:`distance` to data)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from .models import MLP, MODELS, NUM_TRAIN_TIMESTEPS

if TYPE_CHECKING:
    from .training import Lab


# The lab's rows: (row name, model kind, sampler). The DDPM network is sampled twice: with its own ancestral
# sampler (Ho et al. 2020, Algorithm 2: fresh noise added at every step) and with deterministic DDIM (the
# probability-flow ODE of the same network).
ROWS = (("ddpm", "ddpm", "ddpm"), ("ddim", "ddpm", "ddim"), ("flow", "flow", "euler"), ("reflow", "reflow", "euler"))
SAMPLERS = {"ddpm": ("ddpm", "ddim"), "flow": ("euler",), "reflow": ("euler",)}


@torch.no_grad()
def _euler(net: MLP, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    states = [x]
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * net(x, t)
        states.append(x)
    return states


def ddim_timesteps(steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """DDIM's timesteps for ``steps`` steps, "trailing" spacing (Lin et al. 2024, as diffusers'
    ``timestep_spacing="trailing"``): T-1 first, so even one step starts from pure noise.
    E.g. steps=4, T=1000 -> [999, 749, 499, 249]."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1


def time_grid(model: Lab, steps: int) -> np.ndarray:
    """The noise level of each frame of a ``steps``-step trajectory, shape (steps + 1,), 1 -> 0.

    Flow: the flow time t of each state. DDPM: ``timestep / T`` of each state (the last state is the
    clean sample, 0). Handy to label an animation's frames.
    """
    if model.kind in ("flow", "reflow"):
        return np.linspace(1.0, 0.0, steps + 1)
    T = len(model.alphas_cumprod)
    return np.append(ddim_timesteps(steps, T) / T, 0.0)


@torch.no_grad()
def sample(model: Lab, n: int, steps: int, seed: int = 0,
           sampler: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` points with ``steps`` network evaluations and record every state.

    Returns ``(final, trajectory)``: ``final`` (n, 2) float32, and ``trajectory`` (steps + 1, n, 2)
    float32 with ``trajectory[0]`` the starting noise and ``trajectory[-1] == final``.
    The starting noise depends on ``seed`` and ``n`` only, so every model and sampler sampled with the
    same seed starts from the same particles. ``sampler`` (None = the model's own, the first of
    :data:`SAMPLERS` for its kind):

    - ``"ddpm"`` (DDPM models): the DDPM's ancestral sampler (Ho et al. 2020, Algorithm 2) on the
      trailing timesteps of :func:`ddim_timesteps`: ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 -
      abar_prev - s^2) eps + s z`` with the posterior's ``s^2 = (1 - abar_prev) / (1 - abar_t) (1 -
      abar_t / abar_prev)`` and fresh noise ``z`` (drawn from a generator seeded by ``seed``), i.e.
      DDIM with eta = 1, diffusers' ``DDIMScheduler.step(eta=1.0)``; with all T steps it is exactly
      Algorithm 2. A stochastic path: the particles jitter on their way.
    - ``"ddim"`` (DDPM models): DDIM with eta = 0 (Song et al. 2021, eq. 12): ``x0_hat = (x_t -
      sqrt(1 - abar_t) eps) / sqrt(abar_t)``, then ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 -
      abar_prev) eps``; the last step goes to abar = 1 (lands on x0_hat). The same states as
      diffusers' ``DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True,
      clip_sample=False)`` with eta = 0 when ``steps`` divides T (otherwise diffusers steps to ``t - T
      // steps`` rather than to the next listed timestep). A deterministic ODE solver.
    - ``"euler"`` (flow and reflow): Euler steps of ``dx/dt = v(x, t)`` from t = 1 to 0 on a uniform
      grid: ``x_{t'} = x_t + (t' - t) v(x_t, t)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if model.kind not in SAMPLERS:
        raise ValueError(f"unknown model kind {model.kind!r}; expected one of {MODELS}")
    sampler = sampler or SAMPLERS[model.kind][0]
    if sampler not in SAMPLERS[model.kind]:
        raise ValueError(f"a {model.kind} model samples with {' or '.join(SAMPLERS[model.kind])}, not {sampler!r}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    states = [x]
    net = model.net
    if sampler == "euler":
        states = _euler(net, x, steps)
    else:
        abar = model.alphas_cumprod
        T = len(abar)
        timesteps = ddim_timesteps(steps, T)
        for i, t in enumerate(timesteps):
            a_t = float(abar[t])
            a_prev = float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
            eps = net(x, torch.tensor(t / T))
            x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
            var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev) if sampler == "ddpm" else 0.0
            x = math.sqrt(a_prev) * x0_hat + math.sqrt(max(1.0 - a_prev - var, 0.0)) * eps
            if var > 0.0:
                x = x + math.sqrt(var) * torch.randn(x.shape, generator=gen)
            states.append(x)
    trajectory = torch.stack(states).numpy().astype(np.float32)
    return trajectory[-1].copy(), trajectory


# ----------------------------------------------------------------------------------------------
# Measures
# ----------------------------------------------------------------------------------------------

def straightness(trajectory: np.ndarray) -> float:
    """Mean over particles of (distance from start to end) / (length of the path), in [0, 1].

    ``trajectory`` has shape (frames, n, 2) (or (frames, 2) for one particle). The path length is the
    sum of the straight segments between consecutive frames, so 1.0 means every particle moved on a
    straight line at a constant direction; a particle that doubles back or bends scores less. A
    particle that does not move at all counts as straight (1.0). With one step every trajectory is a
    single segment and scores 1.0 trivially: compare models at the same, larger step count.
    """
    traj = np.asarray(trajectory, dtype=np.float64)
    if traj.ndim == 2:
        traj = traj[:, None, :]
    if traj.ndim != 3 or traj.shape[0] < 2:
        raise ValueError(f"expected a trajectory of shape (frames >= 2, n, d), got {traj.shape}")
    chord = np.linalg.norm(traj[-1] - traj[0], axis=-1)
    path = np.linalg.norm(np.diff(traj, axis=0), axis=-1).sum(axis=0)
    ratio = np.where(path > 1e-12, chord / np.maximum(path, 1e-12), 1.0)
    return float(np.clip(ratio, 0.0, 1.0).mean())


def _mean_pairwise_distance(a: np.ndarray, b: np.ndarray) -> float:
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return float(np.sqrt(np.maximum(sq, 0.0)).mean())


def distance(samples: np.ndarray, data: np.ndarray) -> float:
    """Energy distance between two point clouds (Szekely & Rizzo 2013), in the data's units.

    ``sqrt(2 E|X - Y| - E|X - X'| - E|Y - Y'|)`` with X from ``samples`` and Y from ``data``, the
    expectations taken over all pairs (the V-statistic, diagonals included, as
    ``scipy.stats.energy_distance`` does in 1-D). It is 0 exactly when the two clouds are the same
    multiset and grows as they move apart: for a pure shift by a vector d it grows in proportion to
    |d| while |d| is small against the clouds, and like sqrt(2 |d|) once they are far apart (the
    squared distance then grows by 2 per unit of shift). Two independent samples of one distribution
    give a small positive floor that shrinks like 1 / sqrt(n): compare distances at equal sample
    sizes. O(n m) memory; keep n, m to a few thousand. (Energy distance rather than an RBF MMD: no
    bandwidth to choose, and it is in the data's units.)
    """
    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    y = np.asarray(data, dtype=np.float64).reshape(len(data), -1)
    if len(x) == 0 or len(y) == 0:
        raise ValueError("distance needs at least one point in each cloud")
    d2 = 2.0 * _mean_pairwise_distance(x, y) - _mean_pairwise_distance(x, x) - _mean_pairwise_distance(y, y)
    return math.sqrt(max(d2, 0.0))
