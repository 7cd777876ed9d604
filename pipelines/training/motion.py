"""Train the builtin text-to-video model: ``python -m pipelines.train motion``.

AnimateDiff (Guo et al. 2023, "AnimateDiff: Animate Your Personalized Text-to-Image Diffusion
Models without Specific Tuning"): a text-to-image UNet becomes a video model by inserting motion
modules, temporal transformers that attend across frames at each spatial position, after the
UNet's spatial blocks (diffusers ``MotionAdapter`` + ``UNetMotionModel``). The spatial layers
start from the shipped ``shapes-ldm`` UNet, which already draws Shapes; the motion modules start
as the identity (their output projections are zeroed), so step 0 samples every frame as an
independent image. Training denoises VAE latents of Motion-world clips (16 frames of 16x16x4)
with the shapes-ldm objective: epsilon on SD's scaled-linear schedule, Min-SNR weighting, offset
noise (shared by the clip's frames), captions dropped to "" for classifier-free guidance.

Unlike AnimateDiff's recipe the spatial transformer blocks (self- and text cross-attention) are
fine-tuned too, at ``--spatial-lr-scale`` of the LR (``--spatial all`` trains the ResNets as well,
``none`` freezes them): the motion modules read no text, so "moving left" must reach them through
the spatial cross-attention, and ``UNetMotionModel`` has no ``addition_embed_type="text"``
(shapes-ldm's pooled-text embedding), so the text has to steer the frames through cross-attention
alone. Frozen layers in front of the first trained one need no backward pass, which is most of the
16x16 level's cost.

``python -m pipelines.training.motion pack RUN OUT`` writes an ``AnimateDiffPipeline`` folder:
``unet/`` (the fine-tuned spatial ``UNet2DConditionModel``), ``motion_adapter/``
(``MotionAdapter``), shapes-ldm's VAE, text tower, tokenizer and scheduler.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.training import common, latents as lat, motion_aux
from pipelines.training.ldm import SCHEDULER_CFG, _optimizer_to, min_snr_weights
# The latent pool and captions (re-exported: they used to live here).
from pipelines.training.motion_data import (TEXT_TOWER, CaptionTable, _render_chunk, attach_text_tower,  # noqa: F401
                                            build_pool, caption_from_codes, caption_ids, captions_for,
                                            check_text_source, recipe_codes)
from pipelines.video import mixed_noise

BASE_MODEL = Path("assets/models/shapes-ldm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=2000, batch_size=4, lr=5e-4, checkpoint_every=50)
    parser.add_argument("--base", type=Path, default=BASE_MODEL, help="text-to-image folder the spatial layers start from")
    parser.add_argument("--pool", type=int, default=4000, help="clips in the latent pool")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latents", type=Path, default=None, help="latent pool (default <run-dir>/latents.pt)")
    parser.add_argument("--heads", type=int, default=4, help="motion-module attention heads")
    parser.add_argument("--mid-motion", action="store_true", help="a motion module in the mid block too")
    parser.add_argument("--spatial", choices=("all", "attention", "none"), default="attention",
                        help="which spatial layers train with the motion modules (attention: the spatial "
                             "transformer blocks, text cross-attention included)")
    parser.add_argument("--spatial-lr-scale", type=float, default=0.2)
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--drop-prob", type=float, default=0.3)
    parser.add_argument("--ema-decay", type=float, default=0.995)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--min-lr-ratio", type=float, default=0.1)
    parser.add_argument("--offset-noise", type=float, default=0.2)
    parser.add_argument("--snr-gamma", type=float, default=5.0)
    parser.add_argument("--growth-prob", type=float, default=0.2)
    parser.add_argument("--noise-correlation", type=float, default=0.0,
                        help="correlation of the frames' noise (mixed noise prior, PYoCo); 0: independent")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from a packed AnimateDiffPipeline folder (its unet/ and motion_adapter/)")
    parser.add_argument("--x0-weight-floor", type=float, default=0.0,
                        help="lowest weight of the x0 error at any timestep (Min-SNR gives min(SNR, gamma), "
                             "almost 0 at the high-noise steps where a clip's motion is decided)")
    parser.add_argument("--high-t-frac", type=float, default=0.0,
                        help="fraction of each batch whose timesteps are drawn from [--high-t-min, T)")
    parser.add_argument("--high-t-min", type=int, default=700)
    parser.add_argument("--directions", type=str, default=None,
                        help="train on clips of these directions only (comma-separated, e.g. 'right'): a first "
                             "stage whose clips are not time-symmetric, so that frame order pays off by itself")
    parser.add_argument("--text-lr-scale", type=float, default=0.0,
                        help="train the text tower too, at this fraction of the LR (0: frozen, its embeddings "
                             "precomputed). The mini-CLIP never saw motion words: its states for 'moving left' "
                             "and 'moving up' differ ten times less than for 'red' and 'blue'")
    motion_aux.add_arguments(parser)


ACCELERATED = True


# ---------------------------------------------------------------- model

def build_model(base: Path, heads: int, mid: bool, max_frames: int = 32) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """``UNetMotionModel`` = the base UNet's spatial layers + fresh motion modules (identity at start)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet2d = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float32, use_safetensors=True)
    adapter_cfg = {"block_out_channels": list(unet2d.config.block_out_channels),
                   "motion_layers_per_block": int(unet2d.config.layers_per_block),
                   "motion_num_attention_heads": heads, "motion_max_seq_length": max_frames,
                   "use_motion_mid_block": mid, "motion_norm_num_groups": int(unet2d.config.norm_num_groups)}
    adapter = MotionAdapter(**adapter_cfg)
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    model = UNetMotionModel.from_unet2d(unet2d, adapter)
    # the spatial UNet that ships: the base config without the pooled-text embedding it cannot keep
    spatial_cfg = {k: v for k, v in dict(unet2d.config).items() if not k.startswith("_")}
    spatial_cfg.update(addition_embed_type=None, addition_embed_type_num_heads=64)
    return model, spatial_cfg, adapter_cfg


def split_model(model: Any, spatial_cfg: dict[str, Any], adapter_cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The ``UNet2DConditionModel`` and ``MotionAdapter`` whose ``from_unet2d`` rebuilds ``model``."""
    from diffusers import MotionAdapter, UNet2DConditionModel

    unet2d = UNet2DConditionModel(**spatial_cfg)
    state = {k: v for k, v in model.state_dict().items()
             if ".motion_modules." not in k and not k.startswith(TEXT_TOWER + ".")}
    unet2d.load_state_dict(state, strict=True)
    adapter = MotionAdapter(**adapter_cfg)
    motion = {k: v for k, v in model.state_dict().items() if ".motion_modules." in k}
    missing, unexpected = adapter.load_state_dict(motion, strict=False)
    if unexpected or any("motion_modules" in k for k in missing):
        raise RuntimeError(f"motion modules do not fit the adapter: missing {missing[:4]}, unexpected {unexpected[:4]}")
    return unet2d, adapter


# ---------------------------------------------------------------- training

class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = that step's pool rows, caption rows, noise and timesteps (from ``(seed, step)``)."""

    def __init__(self, codes: torch.Tensor, shape: tuple[int, ...], rows: dict[str, int], args: argparse.Namespace,
                 num_train_timesteps: int) -> None:
        self.codes, self.shape, self.rows, self.args, self.T = codes, shape, rows, args, num_train_timesteps
        only = getattr(args, "directions", None)
        self.allowed = None  # every pool row
        if only:
            from pipelines.worlds import motion

            bad = [d for d in only.split(",") if d not in motion.DIRECTIONS]
            if bad:
                raise SystemExit(f"--directions: {', '.join(bad)} not among {', '.join(motion.DIRECTIONS)}")
            wanted = [motion.DIRECTIONS.index(d) for d in only.split(",")]
            self.allowed = np.flatnonzero(np.isin(codes[:, 3].numpy(), wanted))
            if len(self.allowed) == 0:
                raise SystemExit(f"--directions {only}: no clip of the pool moves that way")

    def __len__(self) -> int:
        return int(self.args.steps)

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.args
        rng = common.step_rng(a.seed, step)
        rows = (rng.integers(len(self.codes), size=a.batch_size) if self.allowed is None
                else self.allowed[rng.integers(len(self.allowed), size=a.batch_size)])
        caps = ["" if rng.random() < a.uncond_prob else caption_from_codes(self.codes[r], rng, a.drop_prob)
                for r in rows]
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        f, c, h, w = self.shape
        noise = torch.randn((a.batch_size, c, f, h, w), generator=gen)
        t = torch.randint(0, self.T, (a.batch_size,), generator=gen)
        n_high = int(round(getattr(a, "high_t_frac", 0.0) * a.batch_size))
        if n_high:  # drawn after the rest, so runs without it see the same batches as before
            t[:n_high] = torch.randint(int(a.high_t_min), self.T, (n_high,), generator=gen)
        if a.offset_noise > 0:
            offset = a.offset_noise * torch.randn(a.batch_size, c, 1, 1, 1, generator=gen)
        if a.noise_correlation > 0:  # drawn last, so runs without it see the same noise as before
            noise = mixed_noise(noise, a.noise_correlation, gen)
        if a.offset_noise > 0:
            noise = noise + offset
        return torch.from_numpy(rows), torch.tensor([self.rows[x] for x in caps]), noise, t


def loss_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float, x0_floor: float) -> torch.Tensor:
    """Weights of the epsilon MSE: Min-SNR's ``min(SNR, gamma) / SNR``, raised where needed so that the implied
    weight of the x0 error (epsilon MSE = SNR x x0 MSE) is at least ``x0_floor``."""
    w = min_snr_weights(alphas_cumprod, t, gamma)
    if x0_floor <= 0:
        return w
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return torch.maximum(w, x0_floor / snr)


def packed_unet(folder: Path) -> Any:
    """The ``UNetMotionModel`` of a packed folder: its ``unet/`` joined with its ``motion_adapter/`` (float32)."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    return UNetMotionModel.from_unet2d(
        UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32, use_safetensors=True),
        MotionAdapter.from_pretrained(folder / "motion_adapter", torch_dtype=torch.float32, use_safetensors=True))


def load_init(model: torch.nn.Module, folder: Path) -> None:
    """Copy a packed folder's spatial UNet and motion modules into ``model`` (same architecture)."""
    src = packed_unet(folder)
    if hasattr(model, TEXT_TOWER):  # the folder's text encoder (a previous run may have trained it)
        attach_text_tower(src, folder / "text_encoder")
    model.load_state_dict(src.state_dict(), strict=True)


def main(args: argparse.Namespace) -> dict[str, float]:
    from diffusers import DDPMScheduler

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":  # TF32 matmuls: the convolutions already use it by default
        torch.backends.cuda.matmul.allow_tf32 = True
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    base = Path(args.base)
    pool_path = Path(args.latents) if args.latents is not None else run_dir / "latents.pt"
    if not pool_path.is_file():
        build_pool(base / "vae", pool_path, args.pool, args.frames, seed=args.seed + 20_000,
                   growth_prob=args.growth_prob, device=device, workers=args.workers)
    pool = torch.load(pool_path, map_location="cpu", weights_only=True)
    table = CaptionTable.build_motion(base / "text_encoder", base / "tokenizer", run_dir / "captions.pt", pool["codes"])
    latents_all = pool["latents"].to(device)          # (N, F, C, H, W)
    embeddings = table.embeddings.to(device)
    model, spatial_cfg, adapter_cfg = build_model(base, args.heads, args.mid_motion)
    train_text = args.text_lr_scale > 0
    check_text_source(args, base, run_dir, train_text)
    if train_text:
        attach_text_tower(model, base / "text_encoder")
        ids_table = caption_ids(table, base / "tokenizer").to(device)
    if args.init is not None and not args.resume:
        load_init(model, Path(args.init))
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    aux = motion_aux.setup(model, args, int(latents_all.shape[-1]))
    aux_params = [p for n, p in model.named_parameters() if n.startswith(motion_aux.HEAD + ".")]
    motion_params = [p for n, p in model.named_parameters() if ".motion_modules." in n]
    text_params = [p for n, p in model.named_parameters() if n.startswith(TEXT_TOWER + ".")]
    spatial_params = [p for n, p in model.named_parameters() if ".motion_modules." not in n
                      and not n.startswith((TEXT_TOWER + ".", motion_aux.HEAD + "."))
                      and (args.spatial == "all" or (args.spatial == "attention" and ".attentions." in n))]
    trained_ids = {id(p) for p in motion_params + spatial_params + text_params + aux_params}
    for p in model.parameters():  # frozen layers before the first trained one then need no backward at all
        p.requires_grad_(id(p) in trained_ids)
    optimizer = torch.optim.AdamW([{"params": motion_params, "lr_scale": 1.0},
                                   {"params": spatial_params, "lr_scale": args.spatial_lr_scale},
                                   {"params": text_params, "lr_scale": args.text_lr_scale},
                                   *([{"params": aux_params, "lr_scale": 1.0}] if aux is not None else [])],
                                  lr=args.lr, weight_decay=0.0)
    noise_sched = DDPMScheduler(**SCHEDULER_CFG)
    alphas = noise_sched.alphas_cumprod.float().to(device)
    ema = common.EMA(model, decay=args.ema_decay)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    extra = {"spatial_config": json.dumps(spatial_cfg), "adapter_config": json.dumps(adapter_cfg),
             "base": str(base), "base_hash": lat.file_hash(base / "unet"), "frames": int(pool["frames"]),
             "noise_correlation": float(args.noise_correlation), "init": str(args.init or ""),
             "text_trained": "1" if train_text else ""}
    start = 0
    if args.resume:
        state = ckpt.load(model, optimizer, ema)
        if state is not None:
            start = int(state["step"])
    model.to(device)
    _optimizer_to(optimizer, device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"spatial": spatial_cfg, "adapter": adapter_cfg,
                                                     "params": n_params, "scheduler": SCHEDULER_CFG,
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    budget = common.TimeBudget(args.time_budget, start)
    shape = tuple(latents_all.shape[1:])
    batches = torch.utils.data.DataLoader(StepBatches(pool["codes"], shape, table.rows, args,
                                                      noise_sched.config.num_train_timesteps),
                                          batch_size=None, sampler=range(start, stop), num_workers=args.workers,
                                          pin_memory=device.type == "cuda")
    bar = common.progress(args.steps, initial=start, desc=f"motion {n_params / 1e6:.1f}M")
    t0 = time.time()
    for step, (rows, cap_rows, noise, t) in enumerate(batches, start=start):
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=args.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        x0 = latents_all[rows.to(device)].float().permute(0, 2, 1, 3, 4)   # (B, C, F, H, W)
        frames = x0.shape[2]
        if train_text:
            cond = model.text_tower(ids_table[cap_rows.to(device)])[0].repeat_interleave(frames, dim=0)
        else:
            cond = embeddings[cap_rows.to(device)].repeat_interleave(frames, dim=0)
        noise, t = noise.to(device), t.to(device)
        noisy = noise_sched.add_noise(x0, noise, t)
        pred = model(noisy, t, encoder_hidden_states=cond).sample
        per = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3, 4))
        loss = (per * loss_weights(alphas, t, args.snr_gamma, args.x0_weight_floor)).mean()
        path = aux.loss(model, pool["codes"][rows], frames, t) if aux is not None else None
        optimizer.zero_grad(set_to_none=True)
        (loss if path is None else loss + aux.weight * path).backward()
        gnorm = common.clip_grad(motion_params + spatial_params + text_params + aux_params, 1.0)
        optimizer.step()
        ema.decay = min(args.ema_decay, (1 + step) / (10 + step))
        ema.update(model)
        loss_value = loss.item()
        log.log(step + 1, loss=loss_value, mse=per.mean().item(), lr=lr, grad_norm=gnorm,
                **({"path": path.item()} if path is not None else {}))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
        stop = common.fit_budget(budget, step + 1, args, bar, extra, stop)
        if ckpt.due(step + 1) or step + 1 == stop:
            ema.decay = args.ema_decay
            ckpt.save(step + 1, model, optimizer, ema, extra=extra)
        if step + 1 >= stop:
            break
    bar.close()
    result = {"steps_done": float(stop), "train_seconds": time.time() - t0, "params": float(n_params)}
    if common.stopped_early(stop, args):
        return result
    pack(run_dir, Path(args.out) if args.out is not None else run_dir / "pack")
    print(json.dumps(result))
    return result


# ---------------------------------------------------------------- export

def pack(run_dir: Path, out: Path, use_ema: bool = True, default_steps: int = 10, default_guidance: float = 3.0,
         fps: int = 8) -> Path:
    """Write the ``AnimateDiffPipeline`` folder of ``<run-dir>/checkpoint.pt``."""
    from diffusers import MotionAdapter, UNetMotionModel

    state = torch.load(Path(run_dir) / "checkpoint.pt", map_location="cpu", weights_only=True)
    extra = state["extra"]
    spatial_cfg, adapter_cfg = json.loads(extra["spatial_config"]), json.loads(extra["adapter_config"])
    from diffusers import UNet2DConditionModel

    model = UNetMotionModel.from_unet2d(UNet2DConditionModel(**spatial_cfg), MotionAdapter(**adapter_cfg))
    base = Path(extra["base"])
    text_trained = bool(extra.get("text_trained"))
    if text_trained:
        attach_text_tower(model, base / "text_encoder")
    common.load_trained(model, state, use_ema)
    unet2d, adapter = split_model(model, spatial_cfg, adapter_cfg)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for part in ("vae", "tokenizer", "scheduler") + (() if text_trained else ("text_encoder",)):
        shutil.copytree(base / part, tmp / part)
    if text_trained:
        model.text_tower.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    unet2d.save_pretrained(tmp / "unet", safe_serialization=True)
    adapter.save_pretrained(tmp / "motion_adapter", safe_serialization=True)
    base_index = json.loads((base / "model_index.json").read_text())
    index = {"_class_name": "AnimateDiffPipeline", "_diffusers_version": base_index.get("_diffusers_version"),
             "vae": base_index["vae"], "text_encoder": base_index["text_encoder"],
             "tokenizer": base_index["tokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "motion_adapter": ["diffusers", "MotionAdapter"], "scheduler": base_index["scheduler"],
             "feature_extractor": [None, None], "image_encoder": [None, None]}
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    settings = {"guidance_scale": default_guidance, "num_inference_steps": default_steps, "scheduler": "dpmpp_2m",
                "num_frames": int(extra.get("frames", 16)), "fps": fps}
    if float(extra.get("noise_correlation", 0.0)) > 0:  # the studio draws the initial noise the way training did
        settings["noise_correlation"] = float(extra["noise_correlation"])
    (tmp / "default_settings.json").write_text(json.dumps(settings, indent=2))
    (tmp / "training.json").write_text(json.dumps({"step": int(state["step"]), "base": str(base),
                                                   "base_hash": extra.get("base_hash")}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.replace(out)
    return out


def _cli(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="python -m pipelines.training.motion")
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="write the AnimateDiffPipeline folder of a run")
    pk.add_argument("run_dir", type=Path)
    pk.add_argument("out", type=Path)
    pk.add_argument("--steps", type=int, default=10)
    pk.add_argument("--guidance", type=float, default=3.0)
    pk.add_argument("--no-ema", action="store_true")
    a = p.parse_args(argv)
    if a.cmd == "pack":
        print(pack(a.run_dir, a.out, use_ema=not a.no_ema, default_steps=a.steps, default_guidance=a.guidance))


if __name__ == "__main__":
    _cli(sys.argv[1:])
