"""The 2-D lab: a DDPM and a flow-matching model side by side on 2-D toy data, on the CPU in seconds.

One small MLP architecture (:class:`MLP`) is trained on the same points as a DDPM and as a flow, and the models
are sampled from the same starting noise so that their trajectories can be compared particle by
particle:

- **DDPM** (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"): the linear beta schedule of
  the paper (1e-4 to 0.02 over T = 1000 steps), ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``, and
  the network predicts ``eps`` (the paper's "simple" loss, an MSE on eps with t uniform).
  It is sampled with the deterministic DDIM sampler (Song et al. 2021, "Denoising Diffusion Implicit
  Models", eta = 0) on "trailing" timesteps (the first step starts at t = T - 1, pure noise), so
  that a budget of 1, 2, 4 ... steps is a meaningful run of the same ODE rather than a truncated
  chain.
- **Flow matching / rectified flow** (Lipman et al. 2023, "Flow Matching for Generative Modeling";
  Liu et al. 2023, "Flow Straight and Fast: ... Rectified Flow"), in diffusers' convention (that of
  ``FlowMatchEulerDiscreteScheduler`` and SD3): ``x_t = (1 - t) x0 + t noise`` for t in [0, 1]
  (t = 1 is noise), the network predicts the velocity ``v = noise - x0``, and sampling integrates
  ``dx/dt = v(x, t)`` from t = 1 to t = 0 with Euler steps on a uniform grid.
- **Reflow** (Liu et al. 2023, the "2-rectified flow"): the flow model fine-tuned on straight lines
  between noise and the points its own ODE carries that noise to (:func:`train_reflow`).

Why three: flow matching's *training* lines are straight, but noise and data are paired at random, so
the lines cross and the learned ODE averages them: its sampling paths bend. On these toy sets (data at
the noise's scale) they bend *more* than the DDIM paths of the DDPM, as measured by
:func:`straightness`: at 50 steps on two moons about 0.56 for flow against 0.77 for the DDPM, and the
same ordering (0.57 against 0.82) with the exact velocity and eps of the empirical data in place of
the networks, so it is not a training artefact. The linear path shrinks the cloud towards the data
mean half-way (variance 0.5 at t = 0.5) and particles fly inwards before turning out to their moon;
the variance-preserving DDPM path keeps the cloud's scale (see also Gao et al. 2024, "Diffusion
Meets Flow Matching: Two Sides of the Same Coin"). Reflow is what makes the paths straight (about
0.997), and with them one Euler step is about as good as 50.

Both samplers are written out here (a dozen lines each) rather than borrowed from diffusers'
schedulers: the lab is about seeing the math, and the trajectories it records are exactly the
states the update rules produce.

Measures (see their docstrings): :func:`straightness` of trajectories (1.0 = every particle moves
on a straight line) and :func:`distance`, the energy distance between samples and data.

Nothing here imports ``studio`` or ``gradio``; only numpy and torch. Everything runs on the CPU:
the networks are so small that a GPU would mostly add transfer overhead.

CLI: ``python -m pipelines.lab2d [--dataset two_moons] [--steps 1,2,4,8,16,50] [--train-steps N]``.
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

DATASETS = ("two_moons", "eight_gaussians", "swiss_roll", "checkerboard")
MODELS = ("ddpm", "flow", "reflow")
DEFAULT_STEPS = (1, 2, 4, 8, 16, 50)

# Training defaults, chosen so that both models on two moons train together in well under a minute
# on 2 CPU cores (measured: about 36-44 s for both on a busy 2-core machine, 1 torch thread).
DEFAULT_TRAIN_STEPS = 8000
DEFAULT_REFLOW_STEPS = 2000  # reflow starts from the flow's weights and converges fast
DEFAULT_BATCH_SIZE = 256
DEFAULT_LR = 3e-3
DEFAULT_REFLOW_LR = 1e-3  # reflow fine-tunes the flow net: a gentler start
NUM_TRAIN_TIMESTEPS = 1000


# ----------------------------------------------------------------------------------------------
# Toy datasets
# ----------------------------------------------------------------------------------------------

def _two_moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """scikit-learn's ``make_moons`` shape (noise 0.05), centred and scaled to unit RMS per axis."""
    upper = rng.random(n) < 0.5
    theta = np.pi * rng.random(n)
    x = np.where(upper, np.cos(theta), 1.0 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    pts = np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((n, 2))
    return (pts - np.array([0.5, 0.25])) / 0.707


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Eight Gaussians (std 0.1 of the radius) on a circle, as in FFJORD (Grathwohl et al. 2019)."""
    angles = np.pi / 4 * rng.integers(0, 8, n)
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    pts = centres + 0.2 * rng.standard_normal((n, 2))
    return pts / math.sqrt(2.04)  # per-axis RMS sqrt(2^2 / 2 + 0.2^2)


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
    """The 2-D Swiss roll ``(t cos t, t sin t)`` for t in [1.5 pi, 4.5 pi], noise 0.5."""
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.standard_normal((n, 2))
    return (pts - np.array([2.01, 0.20])) / 6.81


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """FFJORD's checkerboard: 8 filled squares of a 4x4 board on [-2, 2]^2, uniform inside."""
    x1 = 4.0 * rng.random(n) - 2.0
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) / (4.0 / math.sqrt(12.0))  # uniform on [-2, 2]: std 4 / sqrt(12)


_GENERATORS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "two_moons": _two_moons,
    "eight_gaussians": _eight_gaussians,
    "swiss_roll": _swiss_roll,
    "checkerboard": _checkerboard,
}


def sample_dataset(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points of the toy dataset ``name`` as a float32 array of shape (n, 2).

    Deterministic by ``seed``. Every dataset is centred near the origin and scaled by fixed constants
    to a per-axis RMS of about 1, the scale of the standard normal noise the models start from.
    """
    if name not in _GENERATORS:
        raise ValueError(f"unknown 2-D dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return _GENERATORS[name](np.random.default_rng(seed), int(n)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

@dataclass
class Lab:
    """A trained 2-D model and its run.

    ``kind`` is "ddpm" (``net`` predicts eps at t = timestep / T), "flow" or "reflow" (``net`` predicts
    the velocity noise - x0 at flow time t; both sampled the same way). ``losses[i]`` is the training
    loss at step i (one float per step, as passed to ``on_step``); ``seconds`` is the wall time of the
    training loop (for reflow, also of generating its pairs); ``stopped`` says that ``should_stop``
    ended it early (``len(losses)`` < ``train_steps`` then).
    """

    kind: str
    net: MLP
    losses: list[float]
    seconds: float
    dataset: str
    train_steps: int
    batch_size: int
    lr: float
    seed: int
    stopped: bool = False
    alphas_cumprod: Optional[torch.Tensor] = None  # DDPM only: the training schedule, (T,) float64

    def sample(self, n: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """See :func:`sample`."""
        return sample(self, n, steps, seed)


class _Threads:
    """``torch.set_num_threads(n)`` for a block, restored after (process-wide; None leaves it alone)."""

    def __init__(self, n: Optional[int]):
        self.n, self.before = n, None

    def __enter__(self):
        if self.n:
            self.before = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.before is not None:
            torch.set_num_threads(self.before)


def _train(kind: str, dataset: str, train_steps: int, batch_size: int, lr: float, seed: int,
           on_step: Optional[Callable[[int, float], Any]], should_stop: Optional[Callable[[], bool]],
           points: torch.Tensor, noise_pairs: Optional[torch.Tensor], net: MLP, threads: Optional[int]) -> Lab:
    """The shared loop. ``points`` are the data (DDPM, flow) or the ODE end points of the reflow pairs,
    ``noise_pairs`` the matching starting noise (reflow only: then batches take both rows together)."""
    if train_steps < 1 or batch_size < 1:
        raise ValueError(f"train_steps and batch_size must be >= 1, got {train_steps} and {batch_size}")
    gen = torch.Generator().manual_seed(seed + 1)
    try:  # the fused CPU kernel (torch >= 2.4) is about 3x faster than the per-tensor loop here
        opt = torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(net.parameters(), lr=lr)
    # cosine decay to 0: the last steps average out the SGD noise, which 2-D samples show at once
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / train_steps)))
    abar = linear_alphas_cumprod() if kind == "ddpm" else None
    abar32 = abar.float() if abar is not None else None
    T = len(abar) if abar is not None else 0
    losses: list[float] = []
    stopped = False
    net.train()
    start = time.perf_counter()
    with _Threads(threads):
        for step in range(train_steps):
            if should_stop is not None and should_stop():
                stopped = True
                break
            idx = torch.randint(len(points), (batch_size,), generator=gen)
            x0 = points[idx]
            noise = noise_pairs[idx] if noise_pairs is not None else torch.randn(batch_size, 2, generator=gen)
            if kind == "ddpm":  # Ho et al. 2020, Algorithm 1: eps-MSE at a uniform timestep
                ts = torch.randint(T, (batch_size,), generator=gen)
                a = abar32[ts][:, None]
                x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise
                target, t_in = noise, ts.float() / T
            else:  # (re)flow: straight line from data (t = 0) to noise (t = 1), velocity target
                t_in = torch.rand(batch_size, generator=gen)
                x_t = (1.0 - t_in[:, None]) * x0 + t_in[:, None] * noise
                target = noise - x0
            loss = torch.mean((net(x_t, t_in) - target) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            value = float(loss.detach())
            losses.append(value)
            if on_step is not None:
                on_step(step, value)
    seconds = time.perf_counter() - start
    net.eval()
    return Lab(kind=kind, net=net, losses=losses, seconds=seconds, dataset=dataset, train_steps=train_steps,
               batch_size=batch_size, lr=lr, seed=seed, stopped=stopped, alphas_cumprod=abar)


def _training_points(dataset: str, seed: int, data: Optional[np.ndarray]) -> torch.Tensor:
    points = torch.from_numpy(np.asarray(data if data is not None else sample_dataset(dataset, 20_000, seed),
                                         dtype=np.float32))
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise ValueError(f"training data must have shape (n, 2), got {tuple(points.shape)}")
    return points


def _new_net(seed: int, hidden: int, layers: int) -> MLP:
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(seed)
        return MLP(hidden=hidden, layers=layers)


def train_ddpm(dataset: str = "two_moons", train_steps: int = DEFAULT_TRAIN_STEPS,
               batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, seed: int = 0,
               on_step: Optional[Callable[[int, float], Any]] = None,
               should_stop: Optional[Callable[[], bool]] = None, data: Optional[np.ndarray] = None,
               hidden: int = 128, layers: int = 3, threads: Optional[int] = None) -> Lab:
    """Train an :class:`MLP` as a DDPM (eps objective, linear schedule, T = 1000) on a toy dataset.

    The training set is 20 000 points of ``sample_dataset(dataset, 20000, seed)`` unless ``data``
    (shape (n, 2)) is given. Adam with a cosine learning-rate decay to 0 over ``train_steps``.
    ``on_step(step, loss)`` is called after every optimiser step (step counts from 0);
    ``should_stop()`` is polled before every step and ends training early when it returns True.
    ``threads``: torch CPU threads for the loop (process-wide while it runs; None: leave torch's
    setting). The MLP is too small to gain from more than 1, and on a busy machine several threads
    can be ten times slower. Deterministic by ``seed`` for a given thread count. Returns a :class:`Lab`.
    """
    return _train("ddpm", dataset, train_steps, batch_size, lr, seed, on_step, should_stop,
                  _training_points(dataset, seed, data), None, _new_net(seed, hidden, layers), threads)


def train_flow(dataset: str = "two_moons", train_steps: int = DEFAULT_TRAIN_STEPS,
               batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, seed: int = 0,
               on_step: Optional[Callable[[int, float], Any]] = None,
               should_stop: Optional[Callable[[], bool]] = None, data: Optional[np.ndarray] = None,
               hidden: int = 128, layers: int = 3, threads: Optional[int] = None) -> Lab:
    """Train an :class:`MLP` as a rectified-flow model: ``x_t = (1 - t) x0 + t noise``, t ~ U[0, 1],
    MSE on the velocity ``noise - x0`` (noise drawn independently of x0). Same data, optimiser,
    hooks and determinism as :func:`train_ddpm` (and the same initial weights for the same seed)."""
    return _train("flow", dataset, train_steps, batch_size, lr, seed, on_step, should_stop,
                  _training_points(dataset, seed, data), None, _new_net(seed, hidden, layers), threads)


@torch.no_grad()
def _euler(net: MLP, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
    states = [x]
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * net(x, t)
        states.append(x)
    return states


def train_reflow(flow: Lab, train_steps: int = DEFAULT_REFLOW_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                 lr: float = DEFAULT_REFLOW_LR, seed: int = 0, n_pairs: int = 10_000, pair_steps: int = 50,
                 on_step: Optional[Callable[[int, float], Any]] = None,
                 should_stop: Optional[Callable[[], bool]] = None, threads: Optional[int] = None) -> Lab:
    """Reflow (Liu et al. 2023, "Flow Straight and Fast", the 2-rectified flow): straighten a trained flow.

    Plain flow matching pairs data and noise independently, so the straight training lines cross and
    the learned ODE's paths bend (at the start every particle heads for the data mean). Reflow
    draws ``n_pairs`` noise points z, runs the trained ``flow`` ODE from each (``pair_steps`` Euler
    steps) to its end point x0_hat, and trains a new velocity field on the straight lines between these
    *coupled* pairs: ``x_t = (1 - t) x0_hat + t z``, target ``z - x0_hat``. The ODE map does not cross
    itself, so the lines rarely cross and the new paths are nearly straight; one Euler step then
    lands close to where 50 steps of ``flow`` do. The new net starts from ``flow``'s weights (as in
    the paper). The samples can be no better than ``flow``'s own at ``pair_steps``.

    ``seconds`` of the returned :class:`Lab` counts generating the pairs and training. Hooks,
    ``threads`` and determinism as in :func:`train_ddpm`.
    """
    if flow.kind not in ("flow", "reflow"):
        raise ValueError(f"reflow needs a trained flow model, got a {flow.kind!r} model")
    start = time.perf_counter()
    with _Threads(threads):
        z = torch.randn(n_pairs, 2, generator=torch.Generator().manual_seed(seed + 3))
        x0_hat = _euler(flow.net, z, pair_steps)[-1]
    pair_seconds = time.perf_counter() - start
    net = copy.deepcopy(flow.net)
    lab = _train("reflow", flow.dataset, train_steps, batch_size, lr, seed, on_step, should_stop,
                 x0_hat, z, net, threads)
    lab.seconds += pair_seconds
    return lab


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------

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
def sample(model: Lab, n: int, steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` points with ``steps`` network evaluations and record every state.

    Returns ``(final, trajectory)``: ``final`` (n, 2) float32, and ``trajectory`` (steps + 1, n, 2)
    float32 with ``trajectory[0]`` the starting noise and ``trajectory[-1] == final``.
    The starting noise depends on ``seed`` and ``n`` only, so a DDPM and a flow model sampled with the
    same seed start from the same particles. Both samplers are deterministic ODE solvers:

    - DDPM: DDIM with eta = 0 (Song et al. 2021, eq. 12): ``x0_hat = (x_t - sqrt(1 - abar_t) eps) /
      sqrt(abar_t)``, then ``x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) eps`` on the
      trailing timesteps of :func:`ddim_timesteps`; the last step goes to abar = 1 (lands on x0_hat).
      The same states as diffusers' ``DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=True,
      clip_sample=False)`` with eta = 0 when ``steps`` divides T (otherwise diffusers steps to
      ``t - T // steps`` rather than to the next listed timestep).
    - Flow and reflow: Euler steps of ``dx/dt = v(x, t)`` from t = 1 to 0 on a uniform grid:
      ``x_{t'} = x_t + (t' - t) v(x_t, t)``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen)
    states = [x]
    net = model.net
    if model.kind in ("flow", "reflow"):
        states = _euler(net, x, steps)
    elif model.kind == "ddpm":
        abar = model.alphas_cumprod
        T = len(abar)
        timesteps = ddim_timesteps(steps, T)
        for i, t in enumerate(timesteps):
            a_t = float(abar[t])
            a_prev = float(abar[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
            eps = net(x, torch.tensor(t / T))
            x0_hat = (x - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
            x = math.sqrt(a_prev) * x0_hat + math.sqrt(1.0 - a_prev) * eps
            states.append(x)
    else:
        raise ValueError(f"unknown model kind {model.kind!r}; expected one of {MODELS}")
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


# ----------------------------------------------------------------------------------------------
# The side-by-side comparison
# ----------------------------------------------------------------------------------------------

@dataclass
class Comparison:
    """What :func:`compare` measured.

    ``table``: one dict per (model, steps): ``{"model": "ddpm"|"flow"|"reflow", "steps": int,
    "distance": float, "straightness": float}``, grouped by model in :data:`MODELS` order, steps
    ascending. ``losses[model]`` and ``seconds[model]``: each model's training loss history and
    training wall time (reflow's includes generating its pairs). ``labs[model]``: the trained
    :class:`Lab`. ``trajectories[model][steps]``: the (steps + 1, n, 2) trajectory behind each row
    (every row starts from the same noise). ``data``: the fresh data points the distances are measured
    to; ``floor``: the distance between two independent data samples of that size (what a perfect
    model would score). ``threads``: torch threads during training.
    """

    dataset: str
    table: list[dict[str, Any]]
    losses: dict[str, list[float]]
    seconds: dict[str, float]
    labs: dict[str, Lab]
    trajectories: dict[str, dict[int, np.ndarray]]
    data: np.ndarray
    floor: float
    threads: int
    stopped: bool = False

    @property
    def models(self) -> list[str]:
        return list(self.labs)


def compare(dataset: str = "two_moons", train_steps: int = DEFAULT_TRAIN_STEPS,
            steps: Sequence[int] = DEFAULT_STEPS, seed: int = 0, n_samples: int = 1000,
            batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, reflow: bool = True,
            reflow_steps: int = DEFAULT_REFLOW_STEPS,
            on_step: Optional[Callable[[str, int, float], Any]] = None,
            should_stop: Optional[Callable[[], bool]] = None, threads: Optional[int] = 1) -> Comparison:
    """Train a DDPM and a flow model on ``dataset`` (same data, seed and initial weights), and with
    ``reflow`` also a reflow of the flow model (:func:`train_reflow`, ``reflow_steps`` steps); sample
    ``n_samples`` points from each at every step count in ``steps`` from the same noise; measure the
    distance to fresh data and the straightness of the trajectories.

    ``on_step(model, step, loss)``, model "ddpm", "flow" or "reflow", is called after every training
    step (the models train one after the other, in that order). ``should_stop()`` is polled every
    step; once it returns True the remaining training is skipped, what was trained is still sampled,
    and ``stopped`` is set (a model with no training step at all is left out). ``threads``: torch
    threads while training (default 1, the fastest for these tiny nets; None leaves torch's setting).
    """
    steps = sorted({int(s) for s in steps})
    if not steps or steps[0] < 1:
        raise ValueError(f"steps must be positive integers, got {steps}")
    train = sample_dataset(dataset, 20_000, seed)

    def hook(kind: str) -> Optional[Callable[[int, float], Any]]:
        return (lambda i, loss: on_step(kind, i, loss)) if on_step is not None else None

    common = dict(batch_size=batch_size, seed=seed, should_stop=should_stop, threads=threads)
    labs: dict[str, Lab] = {}
    labs["ddpm"] = train_ddpm(dataset, train_steps, lr=lr, data=train, on_step=hook("ddpm"), **common)
    if not labs["ddpm"].stopped:
        labs["flow"] = train_flow(dataset, train_steps, lr=lr, data=train, on_step=hook("flow"), **common)
        if reflow and not labs["flow"].stopped:
            labs["reflow"] = train_reflow(labs["flow"], reflow_steps, on_step=hook("reflow"), **common)
    stopped = any(lab.stopped for lab in labs.values())
    labs = {k: lab for k, lab in labs.items() if lab.losses}
    reference = sample_dataset(dataset, n_samples, seed + 1000)
    floor = distance(sample_dataset(dataset, n_samples, seed + 2000), reference)
    table: list[dict[str, Any]] = []
    trajectories: dict[str, dict[int, np.ndarray]] = {k: {} for k in labs}
    for kind, lab in labs.items():
        for s in steps:
            final, traj = sample(lab, n_samples, s, seed=seed)
            trajectories[kind][s] = traj
            table.append({"model": kind, "steps": s, "distance": distance(final, reference),
                          "straightness": straightness(traj)})
    return Comparison(dataset=dataset, table=table, losses={k: lab.losses for k, lab in labs.items()},
                      seconds={k: lab.seconds for k, lab in labs.items()}, labs=labs, trajectories=trajectories,
                      data=reference, floor=floor, threads=threads or torch.get_num_threads(), stopped=stopped)


def format_table(result: Comparison) -> str:
    """The comparison as a plain-text table, with training seconds, losses and the distance floor."""
    lines = [f"dataset {result.dataset}: distance = energy distance to {len(result.data)} fresh data points "
             f"(floor, data vs data: {result.floor:.4f}); straightness 1.0 = straight paths",
             f"{'model':<6} {'steps':>5} {'distance':>9} {'straightness':>12}"]
    for row in result.table:
        lines.append(f"{row['model']:<6} {row['steps']:>5d} {row['distance']:>9.4f} {row['straightness']:>12.4f}")
    if not result.labs:
        return "\n".join(lines + ["no model trained (stopped before the first step)"])
    first = next(iter(result.labs.values()))
    parts = ", ".join(f"{k} {v:.1f} s ({len(result.losses[k])} steps)" for k, v in result.seconds.items())
    both = sum(result.seconds[k] for k in ("ddpm", "flow") if k in result.seconds)
    lines.append(f"training (batch {first.batch_size}, {result.threads} torch "
                 f"thread(s)): {parts}; ddpm + flow {both:.1f} s, all {sum(result.seconds.values()):.1f} s"
                 + (" (stopped early)" if result.stopped else ""))
    for kind, losses in result.losses.items():
        k = max(1, len(losses) // 20)
        lines.append(f"{kind} loss: mean of first {k} steps {np.mean(losses[:k]):.4f} -> "
                     f"last {k} {np.mean(losses[-k:]):.4f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Comparison:
    parser = argparse.ArgumentParser(prog="python -m pipelines.lab2d", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="two_moons", choices=DATASETS)
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)),
                        help="comma-separated sampling step counts (default %(default)s)")
    parser.add_argument("--train-steps", type=int, default=DEFAULT_TRAIN_STEPS,
                        help="optimiser steps per model (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--samples", type=int, default=1000, help="points sampled per row (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reflow-steps", type=int, default=DEFAULT_REFLOW_STEPS,
                        help="optimiser steps of the reflow model (default %(default)s)")
    parser.add_argument("--no-reflow", action="store_true", help="train only the DDPM and the flow model")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads while training (default %(default)s: the nets are tiny; "
                             "0 = torch's own)")
    args = parser.parse_args(argv)
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--steps must be comma-separated integers, got {args.steps!r}")
    result = compare(args.dataset, train_steps=args.train_steps, steps=steps, seed=args.seed,
                     n_samples=args.samples, batch_size=args.batch_size, lr=args.lr, reflow=not args.no_reflow,
                     reflow_steps=args.reflow_steps,
                     threads=args.threads or None)
    print(format_table(result))
    return result


if __name__ == "__main__":
    main()
