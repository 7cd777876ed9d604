"""Studio generate path vs a direct diffusers call: same model, seed, steps, scheduler.

Runs the variants interleaved (round-robin, rotating the order each round) so that drifting
machine load hits them alike, and prints medians and the ratios to raw diffusers:

    python -m bench.overhead                      # builtin/shapes-ldm if present, else a tiny model
    python -m bench.overhead --model local/my-sd --models-dir models --rounds 15
    python -m bench.overhead --device cuda --dtype float16 --compile default   # on a GPU: fp16, SDPA, compiled

Goals (issue 2): <= 1.03 without trajectory capture, <= 1.10 with it. Issue 12: cross-attention recording
off costs nothing (the "no capture" row is the off path: within 1.02 of raw diffusers); the recorded row
shows what recording every step costs when it is on.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.report import emit


def _pick_model(args):
    from pipelines.registry import ModelRegistry

    registry = ModelRegistry(user_dir=args.models_dir, hf_cache_dir=None)
    if args.model:
        return registry.get(args.model)
    ids = {e.id: e for e in registry.entries()}
    if "builtin/shapes-ldm" in ids:
        return ids["builtin/shapes-ldm"]
    from pipelines.tiny import build_tiny_sd

    folder = Path(tempfile.mkdtemp()) / "bench-sd"
    build_tiny_sd(folder, sample_size=16, block_channels=(32, 64, 128))
    print(f"(no builtin model yet: using a random-weight SD of the builtin's shape at {folder})")
    return ModelRegistry(builtin_dir=None, user_dir=folder.parent).get("local/bench-sd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model id (default: builtin/shapes-ldm or a tiny model)")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--steps", type=int, default=None, help="default: the model's default_settings.json")
    parser.add_argument("--guidance", type=float, default=None, help="default: the model's default_settings.json")
    parser.add_argument("--scheduler", default=None, help="default: the model's, else dpmpp_2m")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (raw diffusers runs on the same device)")
    parser.add_argument("--dtype", default="auto", help="float32, float16, bfloat16 or auto (both sides alike)")
    parser.add_argument("--compile", default="off",
                        help="also time the studio with its denoiser torch.compiled in this mode (e.g. default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import StableDiffusionPipeline

    from pipelines.attention_maps import AttentionRecorder
    from pipelines.devices import resolve_device
    from pipelines.latent_diffusion import LatentDiffusion
    from pipelines.requests import ImageRequest

    from pipelines.default_settings import read_default_settings
    from pipelines.schedulers import DEFAULT_SCHEDULER

    entry = _pick_model(args)
    defaults = read_default_settings(entry.path)  # what the Generate tab starts from for this model
    args.steps = args.steps or defaults["num_inference_steps"]
    args.guidance = defaults["guidance_scale"] if args.guidance is None else args.guidance
    args.scheduler = args.scheduler or defaults["scheduler"] or DEFAULT_SCHEDULER
    device = resolve_device(args.device, args.dtype)
    studio = LatentDiffusion.load(entry, device)
    raw = StableDiffusionPipeline.from_pretrained(entry.path, use_safetensors=True, safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False,
                                                  dtype=device.dtype).to(device.device)
    raw.set_progress_bar_config(disable=True)
    compiled = None
    if args.compile != "off":
        from pipelines.devices import compile_denoiser

        compiled = LatentDiffusion.load(entry, device)
        compile_denoiser(compiled, resolve_device(args.device, args.dtype, args.compile))
    raw.scheduler = studio.scheduler_for(args.scheduler)
    size = studio.native_size
    prompt, seed = "a small red circle in the top left on a black background", 1234

    def run_raw():
        raw(prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, height=size, width=size,
            generator=torch.Generator("cpu").manual_seed(seed))

    def run_studio(capture: bool, previews: bool, attention: bool = False, model=studio):
        on_step = (lambda e: model.preview.decode_live(e.pred_x0[:1])) if previews else None
        model.generate(ImageRequest(prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                                     seed=seed, scheduler=args.scheduler, capture_trajectory=capture),
                        on_step=on_step, attention=AttentionRecorder() if attention else None)

    variants = {
        "raw diffusers": run_raw,
        "studio, no capture": lambda: run_studio(False, False),
        "studio, trajectory capture": lambda: run_studio(True, False),
        "studio, capture + x0 preview every step": lambda: run_studio(True, True),
        "studio, cross-attention recorded": lambda: run_studio(False, False, attention=True),
    }
    if compiled is not None:
        variants[f"studio, denoiser compiled ({args.compile})"] = lambda: run_studio(False, False, model=compiled)
    for name, fn in variants.items():  # warm-up (the compiled variant compiles here)
        started = time.perf_counter()
        fn()
        if "compiled" in name:
            print(f"compiling took {time.perf_counter() - started:.1f} s (first run)")
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["raw diffusers"])
    where = torch.cuda.get_device_name() if device.device == "cuda" else f"{device.device}, {args.threads} threads"
    print(f"model {entry.id}, {size}x{size}, {args.steps} steps {args.scheduler}, guidance {args.guidance}, "
          f"{args.rounds} interleaved rounds, {where}, {device.dtype_name}")
    print(f"{'variant':42s} {'median s':>9s} {'ratio':>7s}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:42s} {med:9.4f} {med / base:7.3f}")
    ratio = {name: statistics.median(values) / base for name, values in times.items()}
    emit("overhead", "studio / raw diffusers (no previews; attention recording off)", ratio["studio, no capture"],
         "x", "<= 1.02 (issue 11: 1.03; issue 12: 2%)", ratio["studio, no capture"] <= 1.02)
    emit("overhead", "trajectory capture / raw", ratio["studio, trajectory capture"], "x", "<= 1.03",
         ratio["studio, trajectory capture"] <= 1.03)
    emit("overhead", "x0 preview every step / raw", ratio["studio, capture + x0 preview every step"], "x",
         "<= 1.10", ratio["studio, capture + x0 preview every step"] <= 1.10)
    emit("overhead", "cross-attention recorded / raw", ratio["studio, cross-attention recorded"], "x")
    if compiled is not None:
        emit("overhead", f"studio, denoiser compiled ({args.compile}) / raw eager, {where}, {device.dtype_name}",
             ratio[f"studio, denoiser compiled ({args.compile})"], "x")


if __name__ == "__main__":
    main()
