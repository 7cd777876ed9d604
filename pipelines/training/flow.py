"""Train shapes-flow, a text-to-image rectified-flow model in Stable Diffusion 3's format:
``python -m pipelines.train flow``.

Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023; Esser et al. 2024, "Scaling
Rectified Flow Transformers", SD3): a latent ``x0`` of the shared shapes VAE and Gaussian noise are
joined by the straight line ``x_s = (1 - s) x0 + s eps``; the network predicts the velocity
``eps - x0`` at ``s`` drawn from SD3's logit-normal density (``s = sigmoid(n)``, ``n ~ N(0, 1)``),
fed as ``timestep = 1000 s`` exactly as diffusers' ``FlowMatchEulerDiscreteScheduler`` feeds it when
sampling. The network is diffusers' ``SD3Transformer2DModel`` (MMDiT: joint attention over image
patches and prompt tokens, adaLN from timestep + pooled text), conditioned the way
``StableDiffusion3Pipeline.encode_prompt`` conditions it: the frozen shapes-clip text tower, exported
as ``CLIPTextModelWithProjection`` and used for both CLIP slots (penultimate-layer states concatenated,
pooled projections concatenated), no T5 (``text_encoder_3`` = None; the pipeline's zero T5 block is
reproduced in training, ``--t5-tokens`` zero tokens long, the length the pack's ``default_settings.json``
tells the family to use). Captions are re-sampled with attribute dropping and replaced by "" with
probability ``--uncond-prob`` for classifier-free guidance. AdamW, warm-up + cosine LR, clipping, EMA.
``--teacher DIR`` regresses onto a trained LDM's estimate of the velocity on the same line instead of the drawn
one (:mod:`pipelines.training.teacher`).

The export (``<run-dir>/pack``) is an ordinary ``StableDiffusion3Pipeline`` folder: the registry loads
it with the same code as a real SD3 checkpoint. The VAE is the LDM's with ``shift_factor`` 0 (SD3's
decode computes ``latents / scaling_factor + shift_factor``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pipelines.training import common, latents as lat, repa, teacher as distil
from pipelines.training.family_samples import FlowGrids
from pipelines.training.ldm import _optimizer_to, sample_captions
from pipelines.training.ldm_samples import add_sample_arguments
from pipelines.training.monitor import RunMonitor

ACCELERATED = True  # understands --device, --workers and --time-budget
T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length (its zero T5 block without T5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=20000, batch_size=256, lr=3e-4, checkpoint_every=500)
    parser.add_argument("--vae-dir", type=Path, default=Path("assets/models/shapes-ldm/vae"))
    parser.add_argument("--clip-dir", type=Path, default=Path("assets/clip/shapes-clip"))
    parser.add_argument("--random-text", action="store_true", help="random-weight text encoder (tests)")
    parser.add_argument("--latents", type=Path, default=None, help="latent pool (default <run-dir>/latents.pt)")
    parser.add_argument("--pool", type=int, default=50_000, help="renders in the latent pool")
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=32)
    common.add_patch_argument(parser)
    repa.add_arguments(parser)
    distil.add_arguments(parser)
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--drop-prob", type=float, default=0.3, help="per-attribute caption dropping")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--t5-tokens", type=int, default=8,
                        help="length of the zero T5 block trained with (written to the pack's default_settings.json "
                             f"as max_sequence_length; the pipeline's default is {T5_TOKENS}). Every zero token "
                             "passes through every joint block: with 256, a step carries 352 tokens (64 image, 32 "
                             "CLIP), with 8 only 104")
    add_sample_arguments(parser, sampler="flow-match Euler", steps=20, guidance=3.0)


def transformer_config(hidden: int, layers: int, head_dim: int, text_dim: int, pooled_dim: int,
                       sample_size: int = 16, patch_size: int = 2) -> dict[str, Any]:
    return {"sample_size": sample_size, "patch_size": common.check_patch_size(patch_size, sample_size), "in_channels": 4, "out_channels": 4, "num_layers": layers,
            "attention_head_dim": head_dim, "num_attention_heads": hidden // head_dim,
            "joint_attention_dim": text_dim, "caption_projection_dim": hidden, "pooled_projection_dim": pooled_dim,
            "pos_embed_max_size": sample_size // patch_size}


def prepare_text(args: argparse.Namespace) -> Path:
    """``<run-dir>/text/{text_encoder,tokenizer}``: the shapes-clip text tower as CLIPTextModelWithProjection."""
    from transformers import CLIPTextModelWithProjection

    from pipelines import mini_clip
    from pipelines.clip_vocab import write_hf_clip_tokenizer

    folder = Path(args.run_dir) / "text"
    if (folder / "text_encoder").is_dir() and (folder / "tokenizer").is_dir():
        return folder
    clip = mini_clip.create_model(seed=args.seed) if args.random_text else mini_clip.load_clip(Path(args.clip_dir))
    hf = CLIPTextModelWithProjection(mini_clip.hf_text_config())
    hf.text_model.load_state_dict(mini_clip.to_hf_text_model(clip).state_dict())
    with torch.no_grad():
        hf.text_projection.weight.copy_(clip.text_projection.detach().float().T)  # open_clip: x @ W
    hf.eval().save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_hf_clip_tokenizer(folder / "tokenizer", model_max_length=mini_clip.CONTEXT_LENGTH, pad_token="!")
    return folder


def build_pipeline(transformer: Any, vae_dir: Path, text: Path) -> Any:
    """A ``StableDiffusion3Pipeline`` of ``transformer``, the shared VAE (shift 0) and the text parts (both slots)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(vae_dir, use_safetensors=True)
    vae.register_to_config(shift_factor=0.0)
    encoder = CLIPTextModelWithProjection.from_pretrained(text / "text_encoder", use_safetensors=True)
    tokenizer = CLIPTokenizer.from_pretrained(text / "tokenizer")
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                                    text_encoder=encoder, tokenizer=tokenizer, text_encoder_2=encoder,
                                    tokenizer_2=tokenizer, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def caption_table(pipe: Any, cache: Path, text_hash: str, batch_size: int = 256) -> dict[str, Any]:
    """Every caption's CLIP block of ``prompt_embeds`` and its pooled embedding, as ``encode_prompt`` makes them."""
    if cache.is_file():
        state = torch.load(cache, map_location="cpu", weights_only=True)
        if state.get("text_hash") == text_hash:
            return state
    captions = lat.all_captions()
    clip_len = pipe.tokenizer_max_length
    embeds, pooled = [], []
    for i in range(0, len(captions), batch_size):
        batch = captions[i:i + batch_size]
        e, _, p, _ = pipe.encode_prompt(prompt=batch, prompt_2=batch, prompt_3=None, device=torch.device("cpu"),
                                        do_classifier_free_guidance=False, max_sequence_length=1)
        embeds.append(e[:, :clip_len].float())
        pooled.append(p.float())
    state = {"text_hash": text_hash, "captions": captions, "embeds": torch.cat(embeds), "pooled": torch.cat(pooled)}
    torch.save(state, cache)
    return state


def export_pack(run_dir: Path, out: Path, vae_dir: Path, text: Path) -> Path:
    """The EMA transformer of ``<run-dir>/checkpoint.pt`` as a complete SD3 folder (+ training.json, and the
    ``default_settings.json`` that carries the T5 block length it was trained with)."""
    from diffusers import SD3Transformer2DModel

    from pipelines.default_settings import write_default_settings

    model, state = common.trained_model(SD3Transformer2DModel, run_dir, "transformer_config")
    build_pipeline(model, vae_dir, text).save_pretrained(out, safe_serialization=True)
    common.write_training_info(out, state, "transformer_config")
    write_default_settings(out, 3.0, 20, max_sequence_length=int(state["extra"].get("t5_tokens", T5_TOKENS)),
                           note="max_sequence_length: the zero T5 block this model was trained with")
    return Path(out)


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (resumably); export the SD3 folder to ``--out`` (default ``<run-dir>/pack``) at the end.

    ``<run-dir>/status.json``, ``stop.request`` and the ``--sample-every`` grids follow the run for the Train
    tab (:class:`pipelines.training.monitor.RunMonitor`)."""
    from diffusers import SD3Transformer2DModel

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text = prepare_text(args)
    text_hash = lat.file_hash(text / "text_encoder")
    pool_path = Path(args.latents) if args.latents is not None else run_dir / "latents.pt"
    if not pool_path.is_file():
        lat.build_latent_pool(Path(args.vae_dir), pool_path, args.pool, seed=args.seed + 10_000, device=device,
                              workers=args.workers)
    pool = lat.load_latent_pool(pool_path)
    latents_all = pool["latents"].to(device)
    text_cfg = json.loads((text / "text_encoder" / "config.json").read_text())
    cfg = transformer_config(args.hidden, args.layers, args.head_dim, 2 * int(text_cfg["hidden_size"]),
                             2 * int(text_cfg["projection_dim"]), sample_size=int(latents_all.shape[-1]),
                             patch_size=args.patch_size)
    model = SD3Transformer2DModel(**cfg).train()
    n_params = sum(p.numel() for p in model.parameters())
    repa_extra: dict[str, Any] = {}
    alignment = repa.setup(model, args, cfg, device, repa_extra)
    table = caption_table(build_pipeline(model, Path(args.vae_dir), text), run_dir / "captions.pt", text_hash)
    rows_of = {c: i for i, c in enumerate(table["captions"])}
    embeds, pooled = table["embeds"].to(device), table["pooled"].to(device)
    teacher = None
    if args.teacher is not None:  # the teacher's own text tower on the same caption list
        distil.check_folder(args.teacher, args.teacher_mix)
        teacher_text = lat.CaptionTable.build(Path(args.teacher) / "text_encoder", Path(args.teacher) / "tokenizer",
                                              cache=run_dir / "teacher_captions.pt")
        if teacher_text.captions != table["captions"]:
            raise SystemExit(f"{run_dir / 'teacher_captions.pt'}: another caption list; delete it and rerun")
        teacher = distil.Teacher(args.teacher, teacher_text.captions, device, args.teacher_mix,
                                 embeddings=teacher_text.embeddings)
    optimizer = torch.optim.AdamW(common.decay_groups(model, 0.0), lr=args.lr, betas=(0.9, 0.999))
    ema = common.EMA(model, decay=args.ema_decay)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    extra = {"transformer_config": json.dumps(cfg), "text_hash": text_hash, "vae_hash": str(pool.get("vae_hash", "")),
             "scaling_factor": float(pool["scaling_factor"]), "t5_tokens": int(args.t5_tokens), **repa_extra,
             **({"teacher": json.dumps(distil.record(args))} if teacher is not None else {})}
    start = 0
    if args.resume:
        state = ckpt.load(model, optimizer, ema, config=[("transformer_config", cfg), *(
            [("repa", repa.config(args))] if alignment is not None else [])])
        start = int(state["step"]) if state is not None else 0
        if state is not None and int(state["extra"].get("t5_tokens", T5_TOKENS)) != args.t5_tokens:
            raise SystemExit(f"--t5-tokens {args.t5_tokens}: this run was trained with "
                             f"{state['extra'].get('t5_tokens', T5_TOKENS)}; resume with that")
    model.to(device)
    _optimizer_to(optimizer, device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"transformer": cfg, "params": n_params,
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    budget = common.TimeBudget(args.time_budget, start)
    if not 1 <= args.t5_tokens <= 512:
        raise SystemExit(f"--t5-tokens must be from 1 to 512 (got {args.t5_tokens})")
    t5_block = torch.zeros(args.batch_size, args.t5_tokens, embeds.shape[-1], device=device)
    bar = common.progress(args.steps, initial=start, desc=f"flow {n_params / 1e6:.1f}M")
    monitor = RunMonitor(run_dir, args.steps, args.batch_size, start, stop, resume=args.resume)
    grids = FlowGrids(monitor.samples, cfg, args, device, build_pipeline, text) if args.sample_every > 0 else None
    with monitor.failures():
        t0 = time.time()
        for step in range(start, stop):
            lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=0.05)
            common.set_lr(optimizer, lr)
            rng = common.step_rng(args.seed, step)
            rows = rng.integers(len(latents_all), size=args.batch_size)
            captions = sample_captions(pool, rows, rng, args.drop_prob, args.uncond_prob)
            gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
            x0 = latents_all[torch.from_numpy(rows).to(device)].float()
            noise = torch.randn(x0.shape, generator=gen).to(device)
            s = torch.sigmoid(torch.randn(args.batch_size, generator=gen)).to(device)  # logit-normal (SD3)
            x_s = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
            cap = torch.tensor([rows_of[c] for c in captions], device=device)
            context = torch.cat([embeds[cap], t5_block], dim=1)
            pred = model(hidden_states=x_s, encoder_hidden_states=context, pooled_projections=pooled[cap],
                         timestep=s * 1000).sample
            target = teacher.velocity_targets(x_s, s, cap, noise, x0) if teacher is not None else noise - x0
            loss = F.mse_loss(pred.float(), target)
            aligned = alignment.loss(model, repa.renders(pool, rows)) if alignment is not None else None
            optimizer.zero_grad(set_to_none=True)
            (loss if aligned is None else loss + alignment.weight * aligned).backward()
            gnorm = common.clip_grad(model.parameters(), 1.0)
            optimizer.step()
            ema.decay = min(args.ema_decay, (1 + step) / (10 + step))
            ema.update(model)
            loss_value = loss.item()
            log.log(step + 1, loss=loss_value, lr=lr, grad_norm=gnorm,
                    **({"repa": aligned.item()} if aligned is not None else {}))
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            stop = common.fit_budget(budget, step + 1, args, bar, extra, stop)
            stop = monitor.end_of_step(step + 1, loss_value, stop, args, ckpt, model, optimizer, ema, extra, grids)
            if step + 1 >= stop:
                break
        bar.close()
        result = {"steps_done": float(stop), "train_seconds": time.time() - t0, "params": float(n_params)}
        out = Path(args.out) if args.out is not None else run_dir / "pack"
        return monitor.finish(stop, args, result, lambda: export_pack(run_dir, out, Path(args.vae_dir), text))
