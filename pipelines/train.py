"""Train a builtin model: ``python -m pipelines.train <target> [options]``.

Each target is a ``"module:function"`` string, imported only when chosen. The module may define
``add_arguments(parser)`` to add its own options and to ``parser.set_defaults(...)`` the shared
ones (steps, batch size, LR, output folder); ``function(args)`` then runs the training. Shared
options: ``--steps --batch-size --lr --run-dir --resume --seed --out --checkpoint-every
--stop-at --threads --device --workers --time-budget``. Example::

    python -m pipelines.train clip --steps 1200 --resume
"""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# target name -> "module:function" (the function receives the parsed argparse.Namespace)
TARGETS: dict[str, str] = {
    "clip": "pipelines.training.clip:main",
    "vae": "pipelines.training.vae:main",
    "ldm": "pipelines.training.ldm:main",
    "dit": "pipelines.training.dit:main",
    "vqgan": "pipelines.training.vqgan:main",
    "prior": "pipelines.training.prior:main",
    "flow": "pipelines.training.flow:main",
    "tones_vae": "pipelines.training.tones_vae:main",
    "tones_clap": "pipelines.training.tones_clap:main",
    "tones_ldm": "pipelines.training.tones_ldm:main",
    "motion": "pipelines.training.motion:main",
    "taesd": "pipelines.training.taesd:main",
}


def resolve(spec: str) -> tuple[ModuleType, Callable[[argparse.Namespace], Any]]:
    """Import ``"module:function"`` lazily; returns (module, function)."""
    module_name, _, func_name = spec.partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, func_name)


def shared_parser(prog: str, targets: Sequence[str]) -> argparse.ArgumentParser:
    """The options every trainer understands (target-specific defaults are set by the target)."""
    p = argparse.ArgumentParser(prog=prog, description="Train a builtin model.")
    p.add_argument("target", choices=sorted(targets), help="what to train")
    p.add_argument("--steps", type=int, default=None, help="total optimisation steps")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--run-dir", type=Path, default=None, help="checkpoints and logs (default runs/<target>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/checkpoint.pt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="where the final weights are exported")
    p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    p.add_argument("--stop-at", type=int, default=None,
                   help="checkpoint and stop after this step (as if interrupted; resume later)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda, cuda:1, or auto")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes (0: in the main one)")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: after a short timing, shrink --steps to what fits (the LR schedule ends on time)")
    return p


def parse_args(argv: Sequence[str], targets: dict[str, str] = TARGETS,
               prog: str = "python -m pipelines.train") -> tuple[argparse.Namespace, Callable[..., Any]]:
    """Two-stage parse: find the target, import it, let it add options, then parse everything."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("target", nargs="?")
    known, _ = probe.parse_known_args(argv)
    parser = shared_parser(prog, list(targets))
    func: Callable[..., Any] | None = None
    if known.target in targets:
        module, func = resolve(targets[known.target])
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser)
    args = parser.parse_args(argv)
    if func is not None and not getattr(module, "ACCELERATED", False):
        for flag, value, default in (("--device", args.device, "cpu"), ("--workers", args.workers, 0),
                                     ("--time-budget", args.time_budget, None)):
            if value != default:
                parser.error(f"{flag} is not supported by the {args.target} target (ldm supports it)")
    if args.run_dir is None:
        args.run_dir = Path("runs") / args.target
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    assert func is not None
    return args, func


def main(argv: Sequence[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, func = parse_args(argv)
    if getattr(sys.modules.get(func.__module__), "ACCELERATED", False):
        from pipelines.training.cpu_launch import spread_cpu_launch

        code = spread_cpu_launch("pipelines.train", argv)  # `accelerate launch --cpu --num_processes N`
        if code is not None:
            if code:
                raise SystemExit(code)
            return None
    return func(args)


if __name__ == "__main__":
    main()
    from pipelines.training.cpu_launch import exit_process

    exit_process(0)  # a finished rank of a multi-process run skips interpreter teardown (see exit_process)
