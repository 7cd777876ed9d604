"""Evaluate a builtin model: ``python -m pipelines.evaluate <target> [options]``.

Same pattern as :mod:`pipelines.train`: each target is a lazily imported ``"module:function"``;
the module may define ``add_evaluate_arguments(parser)`` for its own options. Shared options:
``--weights`` (folder to evaluate; the target picks the default), ``--n`` (renders per split),
``--seed`` (evaluation seed, distinct from training seeds), ``--threads``.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipelines.train import resolve

# target name -> "module:function" (the function receives the parsed argparse.Namespace)
EVALUATORS: dict[str, str] = {
    "shapes-clip": "pipelines.training.clip:evaluate_main",
    "shapes-ldm": "pipelines.evaluation.ldm:main",
    "shapes-vae": "pipelines.training.vae:evaluate_main",
    "shapes-vqgan": "pipelines.evaluation.vqgan:main",
    "families": "pipelines.evaluation.families:main",
    "tones-ldm": "pipelines.evaluation.tones:main",
    "motion-ldm": "pipelines.evaluation.motion:main",
}


def parse_args(argv: Sequence[str], evaluators: dict[str, str] = EVALUATORS) -> tuple[argparse.Namespace,
                                                                                      Callable[..., Any]]:
    """Two-stage parse: find the target, import it, let it add options, then parse everything."""
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("target", nargs="?")
    known, _ = probe.parse_known_args(argv)
    parser = argparse.ArgumentParser(prog="python -m pipelines.evaluate", description="Evaluate a builtin model.")
    parser.add_argument("target", choices=sorted(evaluators))
    parser.add_argument("--weights", type=Path, default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--n", type=int, default=1000, help="renders per evaluation split")
    parser.add_argument("--seed", type=int, default=None, help="evaluation seed (default: the target's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    func: Callable[..., Any] | None = None
    if known.target in evaluators:
        module, func = resolve(evaluators[known.target])
        if hasattr(module, "add_evaluate_arguments"):
            module.add_evaluate_arguments(parser)
    args = parser.parse_args(argv)
    assert func is not None
    return args, func


def main(argv: Sequence[str] | None = None) -> Any:
    args, func = parse_args(sys.argv[1:] if argv is None else argv)
    return func(args)


if __name__ == "__main__":
    main()
