"""Training the 2-D lab's models: :func:`train_ddpm`, :func:`train_flow`, :func:`train_reflow` (each returns a
:class:`Lab`)."""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .data import sample_dataset
from .models import MLP, linear_alphas_cumprod
from .sampling import _euler, sample

# Training defaults, chosen so that both models on two moons train together in well under a minute
# on 2 CPU cores (measured: about 36-44 s for both on a busy 2-core machine, 1 torch thread).
DEFAULT_TRAIN_STEPS = 8000
DEFAULT_REFLOW_STEPS = 2000  # reflow starts from the flow's weights and converges fast
DEFAULT_BATCH_SIZE = 256
DEFAULT_LR = 3e-3
DEFAULT_REFLOW_LR = 1e-3  # reflow fine-tunes the flow net: a gentler start


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
