"""Train the shapes-dit class-conditional Diffusion Transformer: ``python -m pipelines.train dit``.

DiT (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"): the 16x16x4 latent of the
shared shapes VAE is cut into 2x2 patches (64 tokens; ``--patch-size 1``: 256), transformer blocks with adaLN-Zero
conditioning on (timestep, class) denoise them. It is diffusers' ``DiTTransformer2DModel``, so the
result is an ordinary ``DiTPipeline`` folder (transformer, vae, scheduler, ``id2label``) that loads
like ``facebook/DiT-XL-2-256``.

Classes are the Shapes world's (colour, shape) pairs seen in training (the world's hold-out pairs are
never rendered for training, so a class-conditional model cannot have them): class ``k`` is named
"red circle" and so on. Size, position and background vary freely inside a class. Classifier-free
guidance: the label is replaced by diffusers' null class (id 1000, what ``DiTPipeline`` feeds for
the unconditional branch) with probability ``--uncond-prob``; the label table therefore has 1001 rows
(``num_embeds_ada_norm=1000`` plus the null row), as in DiT-XL-2.

Objective: epsilon MSE on DiT's schedule (linear betas 1e-4..0.02, 1000 steps; its SNR at t=999 is
~4e-5, so no offset noise is needed), Min-SNR-gamma weighting, AdamW, warm-up + cosine LR, gradient
clipping, EMA of the weights (what ships). The latent pool is the LDM's (:mod:`pipelines.training.latents`).
``--teacher DIR`` replaces the drawn noise as the target by a trained LDM's prediction on the same ``x_t``
(distillation, :mod:`pipelines.training.teacher`).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipelines.training import common, latents as lat, repa, teacher as distil
from pipelines.training.family_samples import DIT_SAMPLE_LABELS, DiTGrids
from pipelines.training.ldm import _optimizer_to, min_snr_weights
from pipelines.training.ldm_samples import add_sample_arguments
from pipelines.training.monitor import RunMonitor

SCHEDULER_CFG: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
                                 "beta_schedule": "linear", "clip_sample": False, "prediction_type": "epsilon"}
NULL_CLASS = 1000  # DiTPipeline's unconditional label
ACCELERATED = True  # understands --device, --workers and --time-budget


def class_names() -> list[str]:
    """Class id -> "colour shape", the world's seen pairs in palette x shape order."""
    from pipelines.worlds import shapes

    return [f"{c} {s}" for c in shapes.COLOURS for s in shapes.SHAPES if (c, s) not in shapes.HOLDOUT_PAIRS]


def pool_labels(recipes: torch.Tensor) -> torch.Tensor:
    """Class id of each pool row (``recipes``: the pool's (N, 5) attribute indices)."""
    from pipelines.worlds import shapes

    ids = {name: k for k, name in enumerate(class_names())}
    colours, shape_names = list(shapes.COLOURS), list(shapes.SHAPES)
    return torch.tensor([ids[f"{colours[int(r[0])]} {shape_names[int(r[1])]}"] for r in recipes], dtype=torch.long)


def dit_config(hidden: int = 256, layers: int = 6, head_dim: int = 64, patch_size: int = 2) -> dict[str, Any]:
    return {"num_attention_heads": hidden // head_dim, "attention_head_dim": head_dim, "in_channels": 4,
            "out_channels": 4, "num_layers": layers, "sample_size": 16,
            "patch_size": common.check_patch_size(patch_size, 16),
            "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_zero", "norm_elementwise_affine": False}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=20000, batch_size=256, lr=3e-4, checkpoint_every=500)
    parser.add_argument("--vae-dir", type=Path, default=Path("assets/models/shapes-ldm/vae"))
    parser.add_argument("--latents", type=Path, default=None, help="latent pool (default <run-dir>/latents.pt)")
    parser.add_argument("--pool", type=int, default=50_000, help="renders in the latent pool")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    common.add_patch_argument(parser)
    repa.add_arguments(parser)
    distil.add_arguments(parser)
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--min-lr-ratio", type=float, default=0.05)
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR weighting (0: plain MSE)")
    parser.add_argument("--init-transformer", type=Path, default=None,
                        help="start a fresh schedule from these exported weights (same --hidden, --layers and --patch-size)")
    add_sample_arguments(parser, steps=20, guidance=3.0, prompts=DIT_SAMPLE_LABELS, what="class names")


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = that step's (pool rows, dropped-label mask, noise, timesteps), from
    ``step_rng(seed, step)`` alone, on the CPU (the same data on every device; resume-exact)."""

    def __init__(self, n: int, shape: tuple[int, ...], args: argparse.Namespace, num_train_timesteps: int) -> None:
        self.n, self.shape, self.args, self.T = n, shape, args, num_train_timesteps

    def __len__(self) -> int:
        return int(self.args.steps)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.args
        rng = common.step_rng(a.seed, step)
        rows = rng.integers(self.n, size=a.batch_size)
        drop = rng.random(a.batch_size) < a.uncond_prob
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn((a.batch_size, *self.shape), generator=gen)
        t = torch.randint(0, self.T, (a.batch_size,), generator=gen)
        return torch.from_numpy(rows), torch.from_numpy(drop), noise, t


def export_transformer(run_dir: Path, out: Path, use_ema: bool = True) -> Path:
    """Save the (EMA) transformer of ``<run-dir>/checkpoint.pt`` as a diffusers folder (+ training.json)."""
    from diffusers import DiTTransformer2DModel

    model, state = common.trained_model(DiTTransformer2DModel, run_dir, "dit_config", use_ema)
    model.save_pretrained(out, safe_serialization=True)
    common.write_training_info(out, state, "dit_config")
    return Path(out)


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (resumably); export the EMA transformer to ``--out`` (default ``<run-dir>/transformer``).

    ``<run-dir>/status.json``, ``stop.request`` and the ``--sample-every`` grids follow the run for the Train
    tab (:class:`pipelines.training.monitor.RunMonitor`)."""
    from diffusers import DDPMScheduler, DiTTransformer2DModel

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pool_path = Path(args.latents) if args.latents is not None else run_dir / "latents.pt"
    if not pool_path.is_file():
        lat.build_latent_pool(Path(args.vae_dir), pool_path, args.pool, seed=args.seed + 10_000,
                              device=device, workers=args.workers)
    pool = lat.load_latent_pool(pool_path)
    latents_all = pool["latents"].to(device)
    labels_all = pool_labels(pool["recipes"]).to(device)
    cfg = dit_config(args.hidden, args.layers, patch_size=args.patch_size)
    model = DiTTransformer2DModel(**cfg).train()
    n_params = sum(p.numel() for p in model.parameters())
    repa_extra: dict[str, Any] = {}
    alignment = repa.setup(model, args, cfg, device, repa_extra)
    noise_sched = DDPMScheduler(**SCHEDULER_CFG)
    alphas = noise_sched.alphas_cumprod.float().to(device)
    teacher = (distil.Teacher(args.teacher, [f"a {name}" for name in class_names()], device, args.teacher_mix,
                              student_alphas=noise_sched.alphas_cumprod) if args.teacher is not None else None)
    optimizer = torch.optim.AdamW(common.decay_groups(model, 0.0), lr=args.lr, betas=(0.9, 0.999))
    ema = common.EMA(model, decay=args.ema_decay)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    extra = {"dit_config": json.dumps(cfg), "id2label": json.dumps(dict(enumerate(class_names()))),
             "vae_hash": str(pool.get("vae_hash", "")), "scaling_factor": float(pool["scaling_factor"]), **repa_extra,
             **({"teacher": json.dumps(distil.record(args))} if teacher is not None else {})}
    start = 0
    if args.init_transformer is not None and not (args.resume and ckpt.path.is_file()):
        common.init_from_export(model, DiTTransformer2DModel, args.init_transformer, cfg, "--init-transformer",
                                "--hidden, --layers and --patch-size", extra, omit=("id2label",))
        ema = common.EMA(model, decay=args.ema_decay)
    if args.resume:
        state = ckpt.load(model, optimizer, ema, config=[("dit_config", cfg), *(
            [("repa", repa.config(args))] if alignment is not None else [])])
        if state is not None:
            start = int(state["step"])
    model.to(device)
    _optimizer_to(optimizer, device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"dit": cfg, "params": n_params, "scheduler": SCHEDULER_CFG,
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    budget = common.TimeBudget(args.time_budget, start)
    data = StepBatches(len(latents_all), tuple(latents_all.shape[1:]), args, noise_sched.config.num_train_timesteps)
    batches = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, stop), num_workers=args.workers,
                                          pin_memory=device.type == "cuda",
                                          prefetch_factor=4 if args.workers > 0 else None)
    bar = common.progress(args.steps, initial=start, desc=f"dit {n_params / 1e6:.1f}M")
    monitor = RunMonitor(run_dir, args.steps, args.batch_size, start, stop, resume=args.resume)
    grids = (DiTGrids(monitor.samples, cfg, args, device, dict(enumerate(class_names())), SCHEDULER_CFG)
             if args.sample_every > 0 else None)
    with monitor.failures():
        t0 = time.time()
        for step, (rows, drop, noise, t) in enumerate(batches, start=start):
            lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=args.min_lr_ratio)
            common.set_lr(optimizer, lr)
            rows = rows.to(device)
            x0 = latents_all[rows].float()
            labels = torch.where(drop.to(device), torch.full_like(rows, NULL_CLASS), labels_all[rows])
            noise, t = noise.to(device, non_blocking=True), t.to(device, non_blocking=True)
            x_t = noise_sched.add_noise(x0, noise, t)
            target = noise if teacher is None else teacher.epsilon_targets(
                x_t, t, torch.where(labels == NULL_CLASS, teacher.null_row, labels), noise)
            pred = model(x_t, timestep=t, class_labels=labels).sample
            per = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
            loss = (per * min_snr_weights(alphas, t, args.snr_gamma)).mean()
            aligned = alignment.loss(model, repa.renders(pool, rows.tolist())) if alignment is not None else None
            optimizer.zero_grad(set_to_none=True)
            (loss if aligned is None else loss + alignment.weight * aligned).backward()
            gnorm = common.clip_grad(model.parameters(), 1.0)
            optimizer.step()
            ema.decay = min(args.ema_decay, (1 + step) / (10 + step))
            ema.update(model)
            loss_value = loss.item()
            log.log(step + 1, loss=loss_value, mse=per.mean().item(), lr=lr, grad_norm=gnorm,
                    **({"repa": aligned.item()} if aligned is not None else {}))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
            stop = common.fit_budget(budget, step + 1, args, bar, extra, stop)
            stop = monitor.end_of_step(step + 1, loss_value, stop, args, ckpt, model, optimizer, ema, extra, grids)
            if step + 1 >= stop:
                break
        bar.close()
        result = {"steps_done": float(stop), "train_seconds": time.time() - t0, "params": float(n_params)}
        out = Path(args.out) if args.out is not None else run_dir / "transformer"
        return monitor.finish(stop, args, result, lambda: export_transformer(run_dir, out))


def sample_pipeline(transformer_dir: Path, vae_dir: Path):
    """A ``DiTPipeline`` of an exported transformer, the shared VAE and DPM-Solver++ on DiT's schedule."""
    from diffusers import AutoencoderKL, DDPMScheduler, DiTPipeline, DiTTransformer2DModel, DPMSolverMultistepScheduler

    info = json.loads((Path(transformer_dir) / "training.json").read_text())
    pipe = DiTPipeline(transformer=DiTTransformer2DModel.from_pretrained(transformer_dir),
                       vae=AutoencoderKL.from_pretrained(vae_dir),
                       scheduler=DPMSolverMultistepScheduler.from_config(DDPMScheduler(**SCHEDULER_CFG).config),
                       id2label={int(k): v for k, v in json.loads(info["id2label"]).items()})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def export_pack(transformer_dir: Path, vae_dir: Path, out: Path, guidance: float | None = None,
                steps: int | None = None) -> Path:
    """A complete ``DiTPipeline`` folder, laid out as ``facebook/DiT-XL-2-256``: the exported transformer, the
    shared VAE, DPM-Solver++ on DiT's schedule, ``id2label`` in ``model_index.json`` (+ training.json, and
    default_settings.json when ``guidance`` is given)."""
    from pipelines.default_settings import write_default_settings

    info = json.loads((Path(transformer_dir) / "training.json").read_text())
    out = Path(out)
    sample_pipeline(transformer_dir, vae_dir).save_pretrained(out, safe_serialization=True)
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index["id2label"] = {str(k): v for k, v in json.loads(info["id2label"]).items()}
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    shutil.copy2(Path(transformer_dir) / "training.json", out / "training.json")
    if guidance is not None:
        write_default_settings(out, guidance, steps or 20, "dpmpp_2m",
                               note="chosen from the judge: python -m pipelines.training.dit eval")
    return out


def quick_eval(transformer_dir: Path, vae_dir: Path, per_class: int = 4, guidance: float = 3.0, steps: int = 20,
               device: str = "cpu") -> dict[str, Any]:
    """Colour and shape accuracy of ``per_class`` samples of every class (the Shapes judge), the shape
    accuracy per asked shape (``shape_by_shape``) and the judge's readings of the wrong ones
    (``shape_confusions``: "asked->read" counts; "none" when no object was found)."""
    from collections import Counter

    from pipelines.judges.shapes import describe

    pipe = sample_pipeline(transformer_dir, vae_dir).to(device)
    names = class_names()
    right = {"colour": 0, "shape": 0}
    per_shape: dict[str, list[int]] = {}
    confusions: Counter[str] = Counter()
    total = 0
    for k, name in enumerate(names):
        colour, shape = name.split(" ", 1)
        gen = torch.Generator("cpu").manual_seed(k)
        images = pipe([k] * per_class, guidance_scale=guidance, num_inference_steps=steps, generator=gen).images
        for im in images:
            seen = describe(im)
            right["colour"] += seen["colour"] == colour
            right["shape"] += seen["shape"] == shape
            per_shape.setdefault(shape, []).append(int(seen["shape"] == shape))
            if seen["shape"] != shape:
                confusions[f"{shape}->{seen['shape'] or 'none'}"] += 1
            total += 1
    return {key: value / total for key, value in right.items()} | {
        "n": float(total), "shape_by_shape": {s: sum(v) / len(v) for s, v in per_shape.items()},
        "shape_confusions": dict(confusions.most_common())}


def cli(argv: list[str] | None = None) -> None:
    """``python -m pipelines.training.dit eval TRANSFORMER [--guidance G]`` judges an exported transformer;
    ``python -m pipelines.training.dit pack TRANSFORMER OUT --guidance G --steps N`` writes its DiTPipeline folder."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.training.dit")
    parser.add_argument("action", choices=["eval", "pack"])
    parser.add_argument("transformer", type=Path)
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--vae-dir", type=Path, default=Path("assets/models/shapes-ldm/vae"))
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per-class", type=int, default=4)
    args = parser.parse_args(argv)
    if args.action == "eval":
        print(json.dumps(quick_eval(args.transformer, args.vae_dir, args.per_class, args.guidance, args.steps)))
    elif args.out is None:
        parser.error("pack needs OUT")
    else:
        print(export_pack(args.transformer, args.vae_dir, args.out, args.guidance, args.steps))


if __name__ == "__main__":  # pragma: no cover - command line
    cli()
