"""Evaluate the builtin text-to-audio model: ``python -m pipelines.evaluate tones-ldm [--guidance 1,2,4] ...``.

Generates the fixed prompt set :func:`pipelines.worlds.tones.eval_prompts` (120 recipes covering every
waveform x pitch x rhythm combination at least twice; the full caption of each, e.g. "a loud high square wave
pulsing") through the studio's own loaded model (``ModelRegistry().get("builtin/tones-ldm")`` ->
:class:`pipelines.audio_ldm.AudioLDM`, fp32 on the CPU), vocoder included, and judges every clip with
:mod:`pipelines.judges.tones`. Prompts are batched into one ``AudioLDMPipeline`` call with the studio's
conventions: prompt ``i`` starts from the noise of seed ``seed + i`` drawn exactly as
:meth:`AudioLDM.generate` draws it (so each clip equals the studio's single request with that seed), and the
unconditional branch of classifier-free guidance (Ho & Salimans 2022) encodes "". Ground-truth clips of the same
recipes are judged too (the judge's ceiling), and so is their mel -> Griffin-Lim round trip (the vocoder's).

Steps and the reported ("default") guidance are the model's own from its ``default_settings.json``; ``all`` is
the share of clips with pitch band, waveform and rhythm all right. The timing line is one 2 s clip through
:meth:`AudioLDM.generate` at the defaults (one warm-up run first), wall seconds on ``--threads`` CPU threads.
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

DEFAULT_GUIDANCE = "1,2,4"  # the curve; the model's own default scale is always added
SCORED = ("pitch", "waveform", "rhythm", "loudness")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(seed=0)
    parser.add_argument("--guidance", type=str, default=DEFAULT_GUIDANCE, help="comma-separated scales")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's (default_settings.json)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N of the 120 prompts")
    parser.add_argument("--batch", type=int, default=40, help="prompts per pipeline call")
    parser.add_argument("--model-id", type=str, default="builtin/tones-ldm")
    parser.add_argument("--timing-runs", type=int, default=3, help="timed single-clip runs (0: none)")
    parser.add_argument("--no-reference", action="store_true", help="skip judging ground truth and its round trip")
    parser.add_argument("--json", type=Path, default=Path("runs/eval/tones-ldm.json"))


def load_model(weights: Path | None = None, model_id: str = "builtin/tones-ldm") -> Any:
    """The studio's ``AudioLDM`` for ``model_id`` (or for the folder ``weights``), fp32 on the CPU."""
    from pipelines.audio_ldm import AudioLDM
    from pipelines.devices import resolve_device
    from pipelines.registry import ModelRegistry

    if weights is not None:
        entry = ModelRegistry(builtin_dir=Path(weights).resolve().parent).get(f"builtin/{Path(weights).name}")
    else:
        entry = ModelRegistry().get(model_id)
    return AudioLDM.load(entry, resolve_device("cpu"))


@torch.no_grad()
def sample(model: Any, prompts: Sequence[str], seeds: Sequence[int], guidance: float, steps: int,
           duration_s: float = 2.0) -> list[np.ndarray]:
    """One clip per prompt, as ``model.generate(AudioRequest(prompt, seed=s, ...))`` would make it."""
    pipe = model.pipe
    shape = (1, *model.latent_shape(duration_s))
    noise = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    out = pipe(list(prompts), audio_length_in_s=duration_s, num_inference_steps=steps, guidance_scale=guidance,
               latents=noise.to(pipe.unet.device, pipe.unet.dtype), output_type="np")
    n = int(round(duration_s * model.sample_rate))
    return [np.asarray(a, np.float32)[:n] for a in out.audios]


def scores(clips: Sequence[np.ndarray], recipes: Sequence[Any]) -> dict[str, float]:
    """Per-attribute accuracy, and ``all``: pitch, waveform and rhythm all right."""
    from pipelines.judges import tones as judge

    verdicts = [judge.judge(c, r) for c, r in zip(clips, recipes, strict=True)]
    out = {a: float(np.mean([v[a] for v in verdicts])) for a in SCORED}
    out["all"] = float(np.mean([v["pitch"] and v["waveform"] and v["rhythm"] for v in verdicts]))
    return out


def references(recipes: Sequence[Any]) -> dict[str, dict[str, float]]:
    """The judge on ground-truth clips, and on their mel -> Griffin-Lim round trip with the model's vocoder."""
    from pipelines.audio import griffin_lim
    from pipelines.training.tones_data import MEL, clip_mel
    from pipelines.worlds import tones

    truth = [tones.render(r) for r in recipes]
    trip = [griffin_lim(clip_mel(c).T, n_samples=tones.N_SAMPLES, cfg=MEL) for c in truth]
    return {"ground truth": scores(truth, recipes), "ground truth, mel + Griffin-Lim": scores(trip, recipes)}


def time_single(model: Any, steps: int, guidance: float, runs: int) -> list[float]:
    """Wall seconds of ``runs`` single 2 s requests at the defaults (after one warm-up run)."""
    from pipelines.audio_ldm import AudioRequest

    req = AudioRequest(prompt="a high sine tone", duration_s=2.0, num_inference_steps=steps,
                       guidance_scale=guidance, seed=0, capture_trajectory=False)
    model.generate(req)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.generate(req)
        out.append(time.perf_counter() - t0)
    return out


def format_table(rows: dict[str, dict[str, float]]) -> str:
    head = f"{'':34s}" + "".join(f"{a:>10s}" for a in (*SCORED, "all")) + f"{'s/clip':>9s}"
    lines = [head]
    for label, s in rows.items():
        cells = "".join(f"{100 * s[a]:9.1f}%" for a in (*SCORED, "all"))
        lines.append(f"{label:34s}{cells}" + (f"{s['seconds_per_clip']:9.2f}" if "seconds_per_clip" in s else ""))
    return "\n".join(lines)


def weights_mib(folder: Path) -> float:
    """MiB of the folder's safetensors files (symlinked components counted where they point)."""
    return sum(f.resolve().stat().st_size for f in Path(folder).rglob("*.safetensors")) / 2**20


def main(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.default_settings import read_default_settings
    from pipelines.worlds import tones

    torch.set_num_threads(args.threads)
    model = load_model(args.weights, args.model_id)
    folder = Path(model.pipe.name_or_path)
    defaults = read_default_settings(folder)
    steps = args.steps or defaults["num_inference_steps"]
    default_g = float(defaults["guidance_scale"])
    guidances = sorted({float(g) for g in args.guidance.split(",") if g.strip()} | {default_g})
    recipes = tones.eval_prompts()[:args.limit]
    prompts = [tones.caption(r) for r in recipes]
    print(f"{args.model_id if args.weights is None else folder}: {len(prompts)} prompts, one seed each "
          f"(seed {args.seed} + i), {steps} steps, {args.threads} CPU threads; default guidance {default_g:g}",
          flush=True)
    rows: dict[str, dict[str, float]] = {}
    for g in guidances:
        t0, clips = time.perf_counter(), []
        for i in range(0, len(prompts), args.batch):
            chunk = prompts[i:i + args.batch]
            clips += sample(model, chunk, range(args.seed + i, args.seed + i + len(chunk)), g, steps)
        s = scores(clips, recipes)
        s["seconds_per_clip"] = (time.perf_counter() - t0) / len(prompts)
        label = f"guidance {g:g}" + (" (default)" if g == default_g else "")
        rows[label] = s
        print(format_table({label: s}).splitlines()[-1], flush=True)
    if not args.no_reference:
        rows.update(references(recipes))
    result: dict[str, Any] = {"model": str(folder), "steps": steps, "default_guidance": default_g,
                              "n": len(prompts), "seed": args.seed, "threads": args.threads, "table": rows,
                              "weights_mib": weights_mib(folder)}
    print()
    print(format_table(rows))
    if args.timing_runs > 0:
        times = time_single(model, steps, default_g, args.timing_runs)
        result["single_clip_seconds"] = times
        print(f"one 2 s clip at the defaults ({steps} steps, guidance {default_g:g}, Griffin-Lim included): "
              + ", ".join(f"{t:.2f}" for t in times) + f" s (median {statistics.median(times):.2f} s)")
    print(f"weights: {result['weights_mib']:.1f} MiB")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return result
