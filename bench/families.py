"""Seconds per image and per step of every image and audio model the registry lists (builtin and your own).

    python -m bench.families [--models-dir models] [--runs 5] [--threads 2]

Each model runs at its own defaults (``default_settings.json``: steps, guidance, scheduler) at its native size,
batch 1, after one warm-up run; the median of ``--runs`` runs is reported. Token models count one step per
trajectory checkpoint, so their per-step figure is per checkpoint.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench.report import emit


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma-separated model ids")
    args = parser.parse_args(argv)

    import torch

    from pipelines.default_settings import read_default_settings
    from pipelines.devices import resolve_device
    from pipelines.families import ModelCache
    from pipelines.registry import ModelRegistry
    from pipelines.requests import ImageRequest
    from pipelines.schedulers import DEFAULT_SCHEDULER

    torch.set_num_threads(args.threads)
    registry = ModelRegistry(user_dir=args.models_dir, hf_cache_dir=None)
    cache = ModelCache(registry, resolve_device("cpu"), max_loaded=1)
    wanted = set(args.only.split(",")) if args.only else None
    print(f"{'model':34s} {'family':18s} {'steps':>5s} {'s/image':>8s} {'ms/step':>8s}")
    for entry in registry.entries(media=None):
        if wanted is not None and entry.id not in wanted:
            continue
        d = read_default_settings(entry.path)
        model = cache.get(entry.id)
        if entry.family == "audio_ldm":
            from pipelines.audio_ldm import AudioRequest

            req = AudioRequest("a low steady tone", num_inference_steps=d["num_inference_steps"],
                               guidance_scale=d["guidance_scale"], seed=0, capture_trajectory=False)
        elif entry.family == "text_to_video":
            continue  # clips: see the Video section of the README (one 16-frame clip per call)
        else:
            sched = d["scheduler"] or (DEFAULT_SCHEDULER if entry.family == "latent_diffusion" else None)
            req = ImageRequest("a red circle in the top left", num_inference_steps=d["num_inference_steps"],
                               guidance_scale=d["guidance_scale"], seed=0, scheduler=sched,
                               temperature=d["temperature"], top_k=d["top_k"], capture_trajectory=False)
        model.generate(req)  # warm-up
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            model.generate(req)
            times.append(time.perf_counter() - start)
        med, steps = statistics.median(times), d["num_inference_steps"]
        print(f"{entry.id:34s} {entry.family:18s} {steps:5d} {med:8.3f} {med / steps * 1e3:8.1f}")
        emit("families", f"{entry.id} seconds per image ({steps} steps)", med, "s")
        emit("families", f"{entry.id} ms per step", med / steps * 1e3, "ms")


if __name__ == "__main__":
    main()
