"""Train the shapes-ldm denoiser: ``python -m pipelines.train ldm``.

Latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion
Models"): a diffusers ``UNet2DConditionModel`` denoises 16x16x4 VAE latents, conditioned through
cross-attention on the frozen shapes-clip text encoder's per-token hidden states. Training is
DDPM's epsilon objective (Ho et al. 2020, "Denoising Diffusion Probabilistic Models") on SD's
schedule (scaled_linear betas 0.00085-0.012, 1000 steps), weighted per timestep by Min-SNR-gamma
(Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"; weight
``min(SNR, gamma) / SNR``), which leaves the optimum unchanged but spends less capacity on
near-clean timesteps. Captions are dropped to "" with probability ``--uncond-prob`` so one network
also models the unconditional score for classifier-free guidance (Ho & Salimans 2022). AdamW with
warm-up + cosine LR, gradient clipping, and an EMA of the weights (what ships).

Offset noise (Guttenberg 2023, "Diffusion with Offset Noise"): SD's schedule never reaches zero
SNR (at t=999, sqrt(alpha_bar) = 0.068), and on 16x16x4 latents the mean of the noisy latent
still tells the background's brightness at t=999, so a model trained on plain Gaussian noise
learns to read the background from the noise instead of the prompt and, sampling from pure
noise, paints everything mid-gray (measured: background 44% at guidance 7.5 after 1,400 steps).
Adding ``offset * N(0, 1)`` per sample and channel to the noise removes that shortcut; sampling
is unchanged, so every scheduler still applies.

Inputs come from :mod:`pipelines.training.latents`: a cached latent pool with recipes (captions
re-sampled each step with attribute dropping) and a table of every caption's embedding.

On a GPU (``--device cuda``) the pool and the caption table live on the device, ``--workers``
processes prepare each step's batch (:class:`StepBatches`, a function of ``(seed, step)`` alone,
so CPU and GPU runs see the same data), and ``--time-budget`` fits the cosine schedule into a
lease of fixed length. ``--init-unet`` starts a new schedule from trained weights (a second,
lower-LR stage).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training import common, latents as lat

SCHEDULER_CFG: dict[str, Any] = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                 "beta_schedule": "scaled_linear", "steps_offset": 1, "clip_sample": False,
                                 "prediction_type": "epsilon"}


def unet_config(widths: tuple[int, ...] = (32, 64, 128), cross_dim: int = 128, heads: int = 4,
                layers: int = 1, text_time: bool = True) -> dict[str, Any]:
    """UNet: plain ResNet blocks at 16x16, cross-attention at 8x8 and 4x4 (and in the middle).

    ``text_time`` adds diffusers' ``addition_embed_type="text"``: an attention-pooled summary of the
    prompt's token states (``TextTimeEmbedding``, as in unCLIP/Kandinsky) is added to the timestep
    embedding, so every ResNet block, the 16x16 ones included, sees the prompt's global attributes
    (colour, background). It is computed from ``encoder_hidden_states`` alone, so the stock
    ``StableDiffusionPipeline`` drives it unchanged.
    """
    n = len(widths)
    cfg = {"sample_size": 16, "in_channels": 4, "out_channels": 4, "block_out_channels": list(widths),
           "down_block_types": ["DownBlock2D"] + ["CrossAttnDownBlock2D"] * (n - 1),
           "up_block_types": ["CrossAttnUpBlock2D"] * (n - 1) + ["UpBlock2D"],
           "layers_per_block": layers, "cross_attention_dim": cross_dim, "attention_head_dim": heads,
           "norm_num_groups": min(32, widths[0])}
    if text_time:
        cfg.update(addition_embed_type="text", addition_embed_type_num_heads=heads)
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """LDM defaults (batch 128, lr 1e-3, checkpoints every 200 steps) and options."""
    parser.set_defaults(steps=6000, batch_size=128, lr=1e-3, checkpoint_every=200)
    parser.add_argument("--vae-dir", type=Path, default=Path("runs/vae/out"))
    parser.add_argument("--clip-dir", type=Path, default=Path("assets/clip/shapes-clip"))
    parser.add_argument("--random-text", action="store_true", help="random-weight text encoder (tests)")
    parser.add_argument("--retarget-text", action="store_true",
                        help="resume a run trained on another text encoder (re-export it from --clip-dir)")
    parser.add_argument("--latents", type=Path, default=None, help="latent pool (default <run-dir>/latents.pt)")
    parser.add_argument("--pool", type=int, default=50_000, help="renders in the latent pool")
    parser.add_argument("--widths", type=str, default="32,64,128")
    parser.add_argument("--layers", type=int, default=1, help="ResNet layers per UNet block")
    parser.add_argument("--no-text-time", action="store_true", help="cross-attention only (no pooled-text embedding)")
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--drop-prob", type=float, default=0.3, help="per-attribute caption dropping")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--min-lr-ratio", type=float, default=0.05)
    parser.add_argument("--offset-noise", type=float, default=0.2,
                        help="per-sample, per-channel constant added to the noise (0: off)")
    parser.add_argument("--init-unet", type=Path, default=None,
                        help="start a fresh run from these UNet weights (a diffusers folder of the same shape)")
    parser.add_argument("--snr-gamma", type=float, default=5.0, help="Min-SNR weighting (0: plain MSE)")


def prepare_text(args: argparse.Namespace) -> Path:
    """Export the frozen text encoder + tokenizer to ``<run-dir>/text`` (the exact files that ship)."""
    from pipelines import mini_clip

    folder = Path(args.run_dir) / "text"
    if getattr(args, "retarget_text", False):
        shutil.rmtree(folder, ignore_errors=True)
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        return folder
    if args.random_text:
        mini_clip.export_text_encoder(mini_clip.create_model(seed=args.seed), folder / "text_encoder",
                                      tokenizer_dir=folder / "tokenizer")
    else:
        mini_clip.export_sd_text_parts(Path(args.clip_dir), folder)
    return folder


def min_snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """``min(SNR(t), gamma) / SNR(t)`` for the epsilon objective (ones when gamma <= 0)."""
    if gamma <= 0:
        return torch.ones(len(t), device=t.device)
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return snr.clamp(max=gamma) / snr


def sample_captions(pool: dict[str, Any], rows: np.ndarray, rng: np.random.Generator, drop_prob: float,
                    uncond_prob: float) -> list[str]:
    """Fresh captions for pool rows: attributes dropped at random, some replaced by ""."""
    from pipelines.worlds import shapes

    out = []
    for r in rows:
        text = shapes.caption(lat.tensor_to_recipe(pool["recipes"][r]), rng, drop_prob)
        out.append("" if rng.random() < uncond_prob else text)
    return out


def export_unet(run_dir: Path, out: Path, use_ema: bool = True) -> Path:
    """Save the (EMA) UNet of ``<run-dir>/checkpoint.pt`` as a diffusers folder."""
    from diffusers import UNet2DConditionModel

    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    unet = UNet2DConditionModel(**json.loads(state["extra"]["unet_config"]))
    common.load_trained(unet, state, use_ema).save_pretrained(out, safe_serialization=True)
    common.write_training_info(out, state, "unet_config")
    return Path(out)


ACCELERATED = True  # understands --device, --workers and --time-budget


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = that step's batch, drawn from ``step_rng(seed, step)`` alone (resume-exact).

    Returns pool rows, caption-table rows, noise (offset noise included) and timesteps, all made on
    the CPU with the same generator calls whatever the device, so a run can move between CPU and
    GPU and see the same data; workers of a ``DataLoader`` can prepare steps ahead.
    """

    def __init__(self, pool: dict[str, Any], table_rows: dict[str, int], args: argparse.Namespace,
                 num_train_timesteps: int) -> None:
        self.pool = {"recipes": pool["recipes"]}
        self.rows, self.args, self.T = table_rows, args, num_train_timesteps
        self.n, self.shape = len(pool["latents"]), tuple(pool["latents"].shape[1:])

    def __len__(self) -> int:
        return int(self.args.steps)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.args
        rng = common.step_rng(a.seed, step)
        rows = rng.integers(self.n, size=a.batch_size)
        captions = sample_captions(self.pool, rows, rng, a.drop_prob, a.uncond_prob)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        noise = torch.randn((a.batch_size, *self.shape), generator=gen)
        t = torch.randint(0, self.T, (a.batch_size,), generator=gen)
        if a.offset_noise > 0:  # drawn after t, so runs without it see the same noise and timesteps
            noise = noise + a.offset_noise * torch.randn(a.batch_size, self.shape[0], 1, 1, generator=gen)
        return torch.from_numpy(rows), torch.tensor([self.rows[c] for c in captions]), noise, t


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (resumably); export the EMA UNet to ``--out`` (default ``<run-dir>/unet``) at the end."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    text = prepare_text(args)
    table = lat.CaptionTable.build(text / "text_encoder", text / "tokenizer", cache=run_dir / "captions.pt")
    pool_path = Path(args.latents) if args.latents is not None else run_dir / "latents.pt"
    if not pool_path.is_file():
        lat.build_latent_pool(Path(args.vae_dir), pool_path, args.pool, seed=args.seed + 10_000,
                              device=device, workers=args.workers)
    pool = lat.load_latent_pool(pool_path)
    latents_all = pool["latents"].to(device)
    embeddings = table.embeddings.to(device)
    cfg = unet_config(tuple(int(w) for w in args.widths.split(",")), cross_dim=int(table.embeddings.shape[-1]),
                      layers=args.layers, text_time=not args.no_text_time)
    unet = UNet2DConditionModel(**cfg).train()
    n_params = sum(p.numel() for p in unet.parameters())
    noise_sched = DDPMScheduler(**SCHEDULER_CFG)
    alphas = noise_sched.alphas_cumprod.float()
    optimizer = torch.optim.AdamW(common.decay_groups(unet, 0.01), lr=args.lr, betas=(0.9, 0.999))
    ema = common.EMA(unet, decay=args.ema_decay)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    extra = {"unet_config": json.dumps(cfg), "text_hash": lat.file_hash(text / "text_encoder"),
             "vae_hash": str(pool.get("vae_hash", "")), "scaling_factor": float(pool["scaling_factor"])}
    start = 0
    if args.init_unet is not None and not (args.resume and ckpt.path.is_file()):
        common.init_from_export(unet, UNet2DConditionModel, args.init_unet, cfg, "--init-unet",
                                "--widths, --layers, --no-text-time", extra)
        ema = common.EMA(unet, decay=args.ema_decay)
    if args.resume:
        state = ckpt.load(unet, optimizer, ema)
        if state is not None:
            start = int(state["step"])
            if state["extra"].get("text_hash") != extra["text_hash"]:
                if not args.retarget_text:
                    raise RuntimeError("checkpoint was trained on another text encoder: start a fresh run, "
                                       "or continue on the new one with --retarget-text")
                extra["retargeted_at"] = start  # new conditioning from here on: restart the average
                ema = common.EMA(unet, decay=args.ema_decay)
            extra = {**{k: v for k, v in state["extra"].items() if k in ("retargeted_at", "init_from")}, **extra}
    unet.to(device)
    _optimizer_to(optimizer, device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    alphas_dev = alphas.to(device)
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"unet": cfg, "params": n_params, "scheduler": SCHEDULER_CFG,
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    budget = common.TimeBudget(args.time_budget, start)
    batches = torch.utils.data.DataLoader(StepBatches(pool, table.rows, args, noise_sched.config.num_train_timesteps),
                                          batch_size=None, sampler=range(start, stop), num_workers=args.workers,
                                          pin_memory=device.type == "cuda",
                                          prefetch_factor=4 if args.workers > 0 else None)
    bar = common.progress(args.steps, initial=start, desc=f"ldm {n_params / 1e6:.1f}M")
    t0 = time.time()
    for step, (rows, cap_rows, noise, t) in enumerate(batches, start=start):
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=args.min_lr_ratio)
        common.set_lr(optimizer, lr)
        x0 = latents_all[rows.to(device)].float()
        cond = embeddings[cap_rows.to(device)]
        noise, t = noise.to(device, non_blocking=True), t.to(device, non_blocking=True)
        pred = unet(noise_sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per * min_snr_weights(alphas_dev, t, args.snr_gamma)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = common.clip_grad(unet.parameters(), 1.0)
        optimizer.step()
        ema.decay = min(args.ema_decay, (1 + step) / (10 + step))  # EMA warm-up (ships early checkpoints)
        ema.update(unet)
        loss_value = loss.item()  # one device sync for the log and the bar
        log.log(step + 1, loss=loss_value, mse=per.mean().item(), lr=lr, grad_norm=gnorm)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        stop = common.fit_budget(budget, step + 1, args, bar, extra, stop)
        if ckpt.due(step + 1) or step + 1 == stop:
            ema.decay = args.ema_decay
            ckpt.save(step + 1, unet, optimizer, ema, extra=extra)
        if step + 1 >= stop:
            break
    bar.close()
    result = {"steps_done": float(stop), "train_seconds": time.time() - t0, "params": float(n_params)}
    if common.stopped_early(stop, args):
        return result
    export_unet(run_dir, Path(args.out) if args.out is not None else run_dir / "unet")
    print(json.dumps(result))
    return result


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move a (resumed) optimizer's state tensors to ``device``."""
    for state in optimizer.state.values():
        for k, v in state.items():
            if torch.is_tensor(v) and k != "step":
                state[k] = v.to(device)
