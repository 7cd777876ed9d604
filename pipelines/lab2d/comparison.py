"""The 2-D lab's side-by-side comparison (:func:`compare`, :func:`format_table`) and its CLI (:func:`main`,
``python -m pipelines.lab2d``)."""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .data import DATASETS, sample_dataset
from .sampling import ROWS, distance, sample, straightness
from .training import (DEFAULT_BATCH_SIZE, DEFAULT_LR, DEFAULT_REFLOW_STEPS, DEFAULT_TRAIN_STEPS, Lab, train_ddpm,
                       train_flow, train_reflow)

DEFAULT_STEPS = (1, 2, 4, 8, 16, 50)


@dataclass
class Comparison:
    """What :func:`compare` measured.

    ``table``: one dict per (row, steps): ``{"model": "ddpm"|"ddim"|"flow"|"reflow", "steps": int,
    "distance": float, "straightness": float}``, grouped by row in :data:`ROWS` order ("ddpm" is the
    DDPM network with its ancestral sampler, "ddim" the same network with DDIM), steps ascending.
    ``losses[model]`` and ``seconds[model]``: each trained model's training loss history and training
    wall time (reflow's includes generating its pairs). ``labs[model]``: the trained :class:`Lab`.
    ``trajectories[row][steps]``: the (steps + 1, n, 2) trajectory behind each row (every row starts
    from the same noise). ``data``: the fresh data points the distances are measured
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
        """The trained models ("ddpm", "flow", "reflow")."""
        return list(self.labs)

    @property
    def rows(self) -> list[str]:
        """The sampled rows ("ddpm", "ddim", "flow", "reflow"): :data:`ROWS` whose model was trained."""
        return list(self.trajectories)

    def model_of(self, row: str) -> str:
        """The trained model behind a row ("ddim" -> "ddpm")."""
        return next(kind for name, kind, _ in ROWS if name == row)


def compare(dataset: str = "two_moons", train_steps: int = DEFAULT_TRAIN_STEPS,
            steps: Sequence[int] = DEFAULT_STEPS, seed: int = 0, n_samples: int = 1000,
            batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR, reflow: bool = True,
            reflow_steps: int = DEFAULT_REFLOW_STEPS,
            on_step: Optional[Callable[[str, int, float], Any]] = None,
            should_stop: Optional[Callable[[], bool]] = None, threads: Optional[int] = 1) -> Comparison:
    """Train a DDPM and a flow model on ``dataset`` (same data, seed and initial weights), and with
    ``reflow`` also a reflow of the flow model (:func:`train_reflow`, ``reflow_steps`` steps); sample
    ``n_samples`` points from each (the DDPM twice: with its ancestral sampler and with DDIM, see
    :data:`ROWS`) at every step count in ``steps`` from the same noise; measure the distance to fresh
    data and the straightness of the trajectories.

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
    trajectories: dict[str, dict[int, np.ndarray]] = {}
    for row, kind, sampler in ROWS:
        if kind not in labs:
            continue
        trajectories[row] = {}
        for s in steps:
            final, traj = sample(labs[kind], n_samples, s, seed=seed, sampler=sampler)
            trajectories[row][s] = traj
            table.append({"model": row, "steps": s, "distance": distance(final, reference),
                          "straightness": straightness(traj)})
    return Comparison(dataset=dataset, table=table, losses={k: lab.losses for k, lab in labs.items()},
                      seconds={k: lab.seconds for k, lab in labs.items()}, labs=labs, trajectories=trajectories,
                      data=reference, floor=floor, threads=threads or torch.get_num_threads(), stopped=stopped)


def format_table(result: Comparison) -> str:
    """The comparison as a plain-text table, with training seconds, losses and the distance floor."""
    lines = [f"dataset {result.dataset}: distance = energy distance to {len(result.data)} fresh data points "
             f"(floor, data vs data: {result.floor:.4f}); straightness 1.0 = straight paths; "
             "ddpm = the DDPM with its ancestral sampler, ddim = the same network with DDIM",
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
    from pipelines import lab2d  # the package's docstring heads --help

    parser = argparse.ArgumentParser(prog="python -m pipelines.lab2d", description=lab2d.__doc__.split("\n")[0])
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
