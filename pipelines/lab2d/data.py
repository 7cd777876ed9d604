"""The 2-D lab's toy datasets (:func:`sample_dataset`), each centred and scaled to unit RMS per axis."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

DATASETS = ("two_moons", "eight_gaussians", "swiss_roll", "checkerboard")


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
