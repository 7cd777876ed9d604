"""Evaluate the builtin text-to-video model: ``python -m pipelines.evaluate motion-ldm [--guidance 2,3,5] ...``.

Generates the fixed prompt set :func:`pipelines.worlds.motion.eval_prompts` (120 clips, the five directions
in turn, colours, shapes and backgrounds spread evenly; the full caption of each, e.g. "a large red circle
moving left on a white background") through the studio's own loaded model (the registry's entry for the
folder -> :class:`pipelines.video.TextToVideo`, fp32 on the CPU; prompt ``i`` with seed ``seed + i``, so each
clip is exactly what the Video tab makes for that prompt and seed), and judges every clip with
:mod:`pipelines.judges.motion`: direction of the centroid track, colour / shape / background by majority
over frames, ``all`` = every attribute right. Temporal consistency (frame-difference agreement, lower is
smoother) is averaged over the generated clips and over ground-truth clips of the same recipes; the ratio
is the issue's yardstick (≤ 1.5). Ground truth is judged too (the judge's ceiling).

Steps, frames and the reported ("default") guidance are the model's own from ``default_settings.json``.
The timing line is one clip at the defaults (after a warm-up run), wall seconds on ``--threads`` threads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEFAULT_WEIGHTS = Path("assets/models/motion-ldm")
SCORED = ("direction", "colour", "shape", "background")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(seed=0)
    parser.add_argument("--guidance", type=str, default="", help="comma-separated scales (the default is always added)")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's")
    parser.add_argument("--frames", type=int, default=None, help="default: the model's")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N of the 120 prompts")
    parser.add_argument("--batch", type=int, default=8, help="prompts per progress line")
    parser.add_argument("--timing-runs", type=int, default=2, help="timed single-clip runs (0: none)")
    parser.add_argument("--json", type=Path, default=Path("runs/eval/motion-ldm.json"))


def load_model(folder: Path) -> tuple[Any, dict[str, Any]]:
    """The studio's :class:`pipelines.video.TextToVideo` for the model folder (fp32, CPU) and its defaults."""
    from pipelines.default_settings import read_default_settings
    from pipelines.devices import resolve_device
    from pipelines.families import load_model as load_family
    from pipelines.registry import ModelRegistry

    folder = Path(folder).resolve()
    entry = ModelRegistry(builtin_dir=folder.parent).get(f"builtin/{folder.name}")
    return load_family(entry, resolve_device("cpu")), read_default_settings(folder)


def sample(model: Any, prompts: Sequence[str], seeds: Sequence[int], guidance: float, steps: int,
           frames: int) -> list[np.ndarray]:
    """uint8 clips (F, 64, 64, 3), each exactly the studio's request with that prompt and seed."""
    from pipelines.video import VideoRequest

    return [model.generate(VideoRequest(prompt=p, num_frames=frames, num_inference_steps=steps,
                                        guidance_scale=guidance, seed=int(s), capture_trajectory=False)).frames
            for p, s in zip(prompts, seeds, strict=True)]


def judge_clips(clips: Sequence[np.ndarray], recipes: Sequence[Any]) -> dict[str, float]:
    from pipelines.judges import motion as judge

    rows = [judge.judge(c, r) for c, r in zip(clips, recipes, strict=True)]
    out = {k: float(np.mean([r[k] for r in rows])) for k in SCORED}
    out["all"] = float(np.mean([all(r.values()) for r in rows]))
    out["consistency"] = float(np.mean([judge.temporal_consistency(c) for c in clips]))
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.worlds import motion

    torch.set_num_threads(args.threads)
    folder = Path(args.weights) if args.weights is not None else DEFAULT_WEIGHTS
    model, defaults = load_model(folder)
    steps = args.steps or int(defaults.get("num_inference_steps", 10))
    frames = args.frames or int(defaults.get("num_frames", 16))
    default_g = float(defaults.get("guidance_scale", 3.0))
    scales = sorted({default_g, *(float(g) for g in args.guidance.split(",") if g.strip())})
    pairs = motion.eval_prompts(120)[: args.limit]
    recipes, prompts = [r for r, _ in pairs], [c for _, c in pairs]
    truth = [motion.render_clip(r, frames) for r in recipes]
    report: dict[str, Any] = {"model": str(folder), "steps": steps, "frames": frames, "n": len(prompts),
                              "default_guidance": default_g, "truth": judge_clips(truth, recipes), "guidance": {}}
    print(f"{len(prompts)} prompts, {frames} frames, {steps} steps, seeds {args.seed}..{args.seed + len(prompts) - 1}")
    print(f"{'guidance':>10} " + " ".join(f"{k:>10}" for k in (*SCORED, "all")) + f" {'consistency':>12} {'ratio':>6}")
    gt = report["truth"]
    print(f"{'truth':>10} " + " ".join(f"{gt[k]:>10.1%}" for k in (*SCORED, "all")) + f" {gt['consistency']:>12.5f}")
    for g in scales:
        t0 = time.time()
        clips: list[np.ndarray] = []
        for i in range(0, len(prompts), args.batch):
            clips.extend(sample(model, prompts[i:i + args.batch], range(args.seed + i, args.seed + i + len(
                prompts[i:i + args.batch])), g, steps, frames))
        res = judge_clips(clips, recipes)
        res["consistency_ratio"] = res["consistency"] / max(gt["consistency"], 1e-12)
        res["seconds"] = time.time() - t0
        report["guidance"][str(g)] = res
        mark = " (default)" if g == default_g else ""
        print(f"{g:>10g} " + " ".join(f"{res[k]:>10.1%}" for k in (*SCORED, "all"))
              + f" {res['consistency']:>12.5f} {res['consistency_ratio']:>6.2f}{mark}", flush=True)
    if args.timing_runs > 0:
        sample(model, prompts[:1], [args.seed], default_g, steps, frames)  # warm-up
        times = []
        for _ in range(args.timing_runs):
            t0 = time.time()
            sample(model, prompts[:1], [args.seed], default_g, steps, frames)
            times.append(time.time() - t0)
        report["seconds_per_clip"] = times
        print(f"one {frames}-frame clip at the defaults: " + ", ".join(f"{t:.2f} s" for t in times)
              + f" (median {statistics.median(times):.2f} s, {args.threads} CPU threads)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    return report
