"""Family x steps table: ``python -m pipelines.evaluate families [--steps 4,8,16,32,50] [--limit 48]``.

Every builtin model (or ``--models``) samples the same judged prompts (full captions of
:func:`pipelines.worlds.shapes.eval_prompts`, seen combinations; ``--holdout`` adds the hold-out pairs)
through the studio's own ``generate`` at each step count, one image per request with seed
``seed + i``, at the model's ``default_settings.json`` guidance and scheduler. ``--also MODEL@SCHEDULER``
adds rows for a model with another scheduler (default: the shapes-ldm with DDIM, the seeds' baseline
for "flow matching needs fewer steps"). A token model writes its whole grid whatever the step count,
so it gets one row. Network evaluations are counted with a forward hook; seconds are wall time per
image on this machine (``--threads``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

DEFAULT_STEPS = "4,8,16,32,50"
COLUMNS = ("colour", "shape", "position", "all")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", type=str, default=None, help="comma-separated ids (default: every builtin model)")
    parser.add_argument("--steps", type=str, default=DEFAULT_STEPS, help="comma-separated step counts")
    parser.add_argument("--limit", type=int, default=48, help="seen prompts used (of 200)")
    parser.add_argument("--holdout", action="store_true", help="also score the compositional hold-out prompts")
    parser.add_argument("--also", type=str, default="builtin/shapes-ldm@ddim",
                        help="extra MODEL@SCHEDULER rows, comma-separated ('' for none)")
    parser.add_argument("--json", type=Path, default=Path("runs/eval/families.json"))


def judge_scores(images: Sequence[Any], recipes: Sequence[Any]) -> dict[str, float]:
    """Share of images with each attribute right, and with all of them right."""
    from pipelines.judges import shapes as judge

    verdicts = [judge.judge(img, judge.recipe_attributes(r)) for img, r in zip(images, recipes)]
    out = {a: sum(v[a] for v in verdicts) / len(verdicts) for a in judge.ATTRIBUTES}
    out["all"] = sum(all(v.values()) for v in verdicts) / len(verdicts)
    return out


def evaluate_row(model: Any, folder: Path, recipes: Sequence[Any], steps: Optional[int], scheduler: Optional[str],
                 seed: int = 0) -> dict[str, Any]:
    """One table row: ``model`` at ``steps`` (None: a token model's fixed count) over ``recipes``."""
    from pipelines.compare import CallCounter, network_of
    from pipelines.default_settings import read_default_settings
    from pipelines.requests import ImageRequest
    from pipelines.worlds import shapes

    d = read_default_settings(folder)
    scheduler = scheduler or d["scheduler"]  # what the Generate tab starts from
    images, seconds = [], 0.0
    with CallCounter(network_of(model)) as counter:
        for i, recipe in enumerate(recipes):
            req = ImageRequest(prompt=shapes.caption(recipe), num_inference_steps=steps or 1,
                               guidance_scale=d["guidance_scale"], seed=seed + i, scheduler=scheduler,
                               temperature=d["temperature"], top_k=d["top_k"], capture_trajectory=False)
            t0 = time.perf_counter()
            images.append(model.generate(req).images[0])
            seconds += time.perf_counter() - t0
    return {"model_id": model.model_id, "family": model.family, "scheduler": scheduler or "model default",
            "steps": steps, "network_evaluations": counter.calls / len(recipes),
            "guidance_scale": d["guidance_scale"], "seconds_per_image": seconds / len(recipes),
            **judge_scores(images, recipes)}


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    head = (f"{'family':18s}{'model':22s}{'scheduler':14s}{'steps':>6s}{'NFE':>6s}"
            + "".join(f"{c:>10s}" for c in COLUMNS) + f"{'s/image':>9s}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['family']:18s}{r['model_id'].split('/')[-1]:22s}{r['scheduler']:14s}"
                     f"{'-' if r['steps'] is None else r['steps']:>6}{r['network_evaluations']:>6.0f}"
                     + "".join(f"{100 * r[c]:9.1f}%" for c in COLUMNS) + f"{r['seconds_per_image']:9.2f}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pipelines.devices import resolve_device
    from pipelines.families import TOKEN_FAMILIES, load_model
    from pipelines.registry import ModelRegistry
    from pipelines.worlds import shapes

    torch.set_num_threads(args.threads)
    registry = ModelRegistry()
    ids = ([m.strip() for m in args.models.split(",") if m.strip()] if args.models
           else [e.id for e in registry.entries() if e.source == "builtin"])
    runs: list[tuple[str, Optional[str]]] = [(m, None) for m in ids]
    for extra in filter(None, (a.strip() for a in (args.also or "").split(","))):
        model_id, _, sched = extra.partition("@")
        if model_id in ids and sched:
            runs.append((model_id, sched))
    recipes = shapes.eval_prompts()
    chosen = [r for r in recipes if not r.is_holdout][:args.limit]
    if args.holdout:
        chosen += [r for r in recipes if r.is_holdout]
    step_counts = [int(s) for s in args.steps.split(",") if s.strip()]
    device = resolve_device("cpu")
    loaded: dict[str, Any] = {}
    rows = []
    for model_id, sched in runs:
        entry = registry.get(model_id)
        model = loaded.setdefault(model_id, load_model(entry, device))
        for steps in ([None] if entry.family in TOKEN_FAMILIES else step_counts):
            rows.append(evaluate_row(model, entry.path, chosen, steps, sched, seed=args.seed or 0))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{len(chosen)} prompts per row (seen{' + hold-out' if args.holdout else ''}), one image each, "
          f"{args.threads} CPU threads\n" + format_table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    return rows
