"""Evaluate the shapes-vqgan: ``python -m pipelines.evaluate shapes-vqgan [--limit 200]``.

Two numbers per the families issue: the tokenizer's reconstruction PSNR (encode -> quantize ->
decode of ``--n`` held-out renders, uint8 scale) with its codebook use, and the token prior's
samples judged on the seen evaluation prompts at the model's default settings (guidance on logits,
temperature, top-k from ``default_settings.json``), through the studio's own ``generate``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-id", type=str, default="builtin/shapes-vqgan")
    parser.add_argument("--limit", type=int, default=200, help="seen prompts sampled (of 200)")
    parser.add_argument("--json", type=Path, default=Path("runs/eval/shapes-vqgan.json"))


def main(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.devices import resolve_device
    from pipelines.evaluation.families import evaluate_row
    from pipelines.families import load_model
    from pipelines.registry import ModelRegistry
    from pipelines.training.vqgan import evaluate as reconstruction
    from pipelines.worlds import shapes

    torch.set_num_threads(args.threads)
    registry = ModelRegistry(builtin_dir=Path(args.weights).resolve().parent) if args.weights else ModelRegistry()
    entry = registry.get(f"builtin/{Path(args.weights).name}" if args.weights else args.model_id)
    model = load_model(entry, resolve_device("cpu"))
    result: dict[str, Any] = {"model": entry.id, "reconstruction": reconstruction(model.vqvae, n=args.n)}
    seen = [r for r in shapes.eval_prompts() if not r.is_holdout][:args.limit]
    result["prior"] = evaluate_row(model, entry.path, seen, None, None, seed=args.seed or 0)
    rec, prior = result["reconstruction"], result["prior"]
    print(f"VQGAN reconstruction: PSNR {rec['psnr']:.2f} dB on {args.n} held-out renders, "
          f"{rec['codes_used']:.0f} of {model.vqvae.config.num_vq_embeddings} codes used")
    print(f"token prior, {len(seen)} seen prompts (guidance {prior['guidance_scale']:g}): "
          + ", ".join(f"{k} {100 * prior[k]:.1f}%" for k in ("colour", "shape", "position", "size", "background", "all"))
          + f"; {prior['seconds_per_image']:.2f} s/image")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result
