"""Evaluate the shapes-ldm: ``python -m pipelines.evaluate shapes-ldm [--guidance 1,2,4,7.5,12] ...``.

Samples the fixed prompt set :func:`pipelines.worlds.shapes.eval_prompts` (seen combinations plus
the compositional hold-out pairs, full captions) through the studio's own loaded model
(``ModelRegistry().get("builtin/shapes-ldm")`` -> :class:`pipelines.latent_diffusion.LatentDiffusion`
on the CPU) and judges every image with :mod:`pipelines.judges.shapes`. Prompts are batched into
one diffusers call, with the studio's conventions: the scheduler swapped in with
``from_config`` by name, prompt ``i`` uses seed ``seed + i`` (its own CPU generator, so the
image equals the studio's single request with that seed), no negative prompt (the unconditional
branch of classifier-free guidance, Ho & Salimans 2022, encodes ""). Ground-truth renders of the
same recipes are judged too (the judge's own ceiling). Rombach et al. 2022 (latent diffusion).

Steps, scheduler and the reported ("default") guidance are the model's own defaults from its
``default_settings.json``, i.e. what the Generate tab starts from; ``all`` is the share of
images with every attribute right.
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DEFAULT_GUIDANCE = "1,2,4,7.5,12"  # the curve; the model's own default scale is always added


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guidance", type=str, default=DEFAULT_GUIDANCE, help="comma-separated scales")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's (default_settings.json)")
    parser.add_argument("--scheduler", type=str, default=None, help="default: the model's, else dpmpp_2m")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N seen prompts")
    parser.add_argument("--batch", type=int, default=48, help="prompts per diffusers call")
    parser.add_argument("--model-id", type=str, default="builtin/shapes-ldm")
    parser.add_argument("--json", type=Path, default=Path("runs/eval/shapes-ldm.json"))


def load_model(weights: Path | None = None, model_id: str = "builtin/shapes-ldm") -> Any:
    """The studio's ``LatentDiffusion`` for ``model_id`` (or for the folder ``weights``), fp32 CPU."""
    from pipelines.devices import resolve_device
    from pipelines.latent_diffusion import LatentDiffusion
    from pipelines.registry import ModelRegistry

    if weights is not None:
        entry = ModelRegistry(builtin_dir=Path(weights).resolve().parent).get(f"builtin/{Path(weights).name}")
    else:
        entry = ModelRegistry().get(model_id)
    return LatentDiffusion.load(entry, resolve_device("cpu"))


@torch.no_grad()
def sample(model: Any, prompts: Sequence[str], seeds: Sequence[int], guidance: float, steps: int = 25,
           scheduler: str = "dpmpp_2m", size: int = 64) -> list[Any]:
    """One PIL image per prompt, as ``model.generate(ImageRequest(prompt, seed=s, ...))`` would give."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe = model.pipe
    pipe.scheduler = model.scheduler_for(scheduler)
    f = pipe.vae_scale_factor
    noise = torch.cat([randn_tensor((1, pipe.unet.config.in_channels, size // f, size // f),
                                    generator=torch.Generator("cpu").manual_seed(int(s)), dtype=torch.float32)
                       for s in seeds]).to(pipe.device, pipe.unet.dtype)
    out = pipe(prompt=list(prompts), negative_prompt=None, num_inference_steps=steps, guidance_scale=guidance,
               height=size, width=size, latents=noise)
    return list(out.images)


def _split_scores(images: list[Any], recipes: list[Any]) -> dict[str, dict[str, float]]:
    """Per split: each attribute's accuracy, and ``all`` (images with every attribute right)."""
    from pipelines.judges import shapes as judge

    out = {}
    for name, keep in (("seen", lambda r: not r.is_holdout), ("holdout", lambda r: r.is_holdout)):
        verdicts = [judge.judge(images[i], judge.recipe_attributes(r)) for i, r in enumerate(recipes) if keep(r)]
        scores = {a: sum(v[a] for v in verdicts) / len(verdicts) for a in judge.ATTRIBUTES}
        scores["all"] = sum(all(v.values()) for v in verdicts) / len(verdicts)
        out[name] = scores
    return out


def evaluate(model: Any, recipes: list[Any], guidances: Sequence[float], steps: int = 25,
             scheduler: str = "dpmpp_2m", seed: int = 0, batch: int = 48, progress: bool = True) -> dict[str, Any]:
    """Scores per guidance scale (seen / hold-out per attribute), ground truth, and timings."""
    from pipelines.worlds import shapes

    prompts = [shapes.caption(r) for r in recipes]
    result: dict[str, Any] = {"n_seen": sum(not r.is_holdout for r in recipes),
                              "n_holdout": sum(r.is_holdout for r in recipes), "steps": steps,
                              "scheduler": scheduler, "seed": seed, "guidance": {}}
    result["ground_truth"] = _split_scores(list(shapes.render_batch(recipes)), recipes)
    for g in guidances:
        t0, images = time.perf_counter(), []
        for i in range(0, len(prompts), batch):
            images += sample(model, prompts[i:i + batch], range(seed + i, seed + i + len(prompts[i:i + batch])),
                             g, steps, scheduler)
        scores = _split_scores(images, recipes)
        scores["seconds_per_image"] = (time.perf_counter() - t0) / len(prompts)
        result["guidance"][str(g)] = scores
        if progress:
            print(f"guidance {g:g}: {json.dumps(scores)}", flush=True)
    return result


def model_defaults(model: Any) -> dict[str, Any]:
    """The Generate tab's defaults for this model (its ``default_settings.json``)."""
    from pipelines.default_settings import read_default_settings

    return read_default_settings(Path(model.pipe.name_or_path))


def time_single(model: Any, defaults: dict[str, Any], prompt: str = "a red circle", repeats: int = 3) -> float:
    """Best wall seconds of one 64x64 studio request at ``defaults`` (the model's Generate defaults)."""
    from pipelines.requests import ImageRequest
    from pipelines.schedulers import DEFAULT_SCHEDULER

    req = ImageRequest(prompt=prompt, scheduler=defaults["scheduler"] or DEFAULT_SCHEDULER,
                       num_inference_steps=defaults["num_inference_steps"], guidance_scale=defaults["guidance_scale"],
                       height=64, width=64, capture_trajectory=False)
    model.generate(req)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate(req)
        best = min(best, time.perf_counter() - t0)
    return best


def format_table(result: dict[str, Any]) -> str:
    """A compact text table: rows = split x guidance (+ ground truth), columns = attributes."""
    from pipelines.worlds.shapes import ATTRIBUTES

    columns = (*ATTRIBUTES, "all")
    head = f"{'':30s}" + "".join(f"{a:>11s}" for a in columns)
    lines = [head]

    def row(label: str, scores: dict[str, float]) -> str:
        return f"{label:30s}" + "".join(f"{100 * scores.get(a, float('nan')):10.1f}%" for a in columns)

    default = result.get("default_guidance")
    for split in ("seen", "holdout"):
        n = result[f"n_{split}"]
        lines.append(row(f"{split} renders (n={n})", result["ground_truth"][split]))
        for g, scores in result["guidance"].items():
            mark = " (default)" if default is not None and float(g) == default else ""
            lines.append(row(f"{split} g={g}{mark}", scores[split]))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """CLI entry (see module docstring); prints the table and writes ``--json``."""
    from pipelines.worlds import shapes

    torch.set_num_threads(args.threads)
    recipes = shapes.eval_prompts()
    if args.limit is not None:
        seen = [r for r in recipes if not r.is_holdout][:args.limit]
        recipes = seen + [r for r in recipes if r.is_holdout]
    from pipelines.schedulers import DEFAULT_SCHEDULER

    model = load_model(args.weights, args.model_id)
    defaults = model_defaults(model)
    default = defaults["guidance_scale"]
    args.steps = args.steps or defaults["num_inference_steps"]
    args.scheduler = args.scheduler or defaults["scheduler"] or DEFAULT_SCHEDULER
    guidances = sorted({float(g) for g in args.guidance.split(",")} | {default})
    result = evaluate(model, recipes, guidances, args.steps, args.scheduler, seed=args.seed or 0, batch=args.batch)
    result["default_guidance"] = default
    result["seconds_per_image_single"] = time_single(model, defaults)
    result["weights"] = str(Path(model.pipe.name_or_path))
    info = Path(model.pipe.name_or_path) / "training.json"
    result["training"] = json.loads(info.read_text()) if info.is_file() else {}
    print(format_table(result))
    print(f"one 64x64 image at this model's defaults ({defaults['num_inference_steps']} "
          f"{defaults['scheduler'] or DEFAULT_SCHEDULER} steps, guidance {default:g}): "
          f"{result['seconds_per_image_single']:.2f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result


def summary(result: dict[str, Any], guidance: float | None = None) -> dict[str, float]:
    """Flat ``{split_attr: accuracy}`` at one guidance (default: the model's) for tests and quick checks."""
    scores = result["guidance"][str(float(result["default_guidance"] if guidance is None else guidance))]
    return {f"{s}_{a}": v for s in ("seen", "holdout") for a, v in scores[s].items()}


