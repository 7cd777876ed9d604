"""Train the shapes-vqgan token prior: ``python -m pipelines.train prior``.

The second stage of "Taming Transformers" (Esser et al. 2021): the trained VQGAN (``--vqgan-dir``:
the shipped ``assets/tokenizers/shapes-vqgan``, made by ``python -m pipelines.train vqgan``) turns a pool of training renders (hold-out pairs excluded)
into 16x16 grids of codebook ids once; a :class:`pipelines.token_prior.TokenPriorTransformer` learns
``p(t_i | t_<i, text)`` by next-token cross-entropy in raster order (teacher forcing), reading the
frozen shapes-clip text encoder's per-token states through cross-attention, exactly as the
shapes-ldm does. Captions are re-sampled every step with attribute dropping and replaced by "" with
probability ``--uncond-prob``, so the same network gives the unconditional logits that
classifier-free guidance on logits needs. AdamW, warm-up + cosine LR, gradient clipping and an EMA
of the weights (what ships).

The export is a complete model folder (``<run-dir>/pack``): ``vqvae``, ``prior``, ``text_encoder`` and
``tokenizer`` with ``model_index.json`` (``VQGANTokenPriorPipeline``), loadable by the registry.
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
from pipelines.training.ldm import _optimizer_to, prepare_text, sample_captions

ACCELERATED = True  # understands --device and --time-budget (the batches are built in the main process)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=3000, batch_size=64, lr=1e-3, checkpoint_every=200)
    parser.add_argument("--vqgan-dir", type=Path, default=Path("assets/tokenizers/shapes-vqgan"))
    parser.add_argument("--clip-dir", type=Path, default=Path("assets/clip/shapes-clip"))
    parser.add_argument("--random-text", action="store_true", help="random-weight text encoder (tests)")
    parser.add_argument("--pool", type=int, default=40_000, help="renders tokenized for training")
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--uncond-prob", type=float, default=0.1)
    parser.add_argument("--drop-prob", type=float, default=0.3, help="per-attribute caption dropping")
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--warmup", type=int, default=200)


@torch.no_grad()
def build_token_pool(vqgan_dir: Path, out: Path, n: int, seed: int, chunk: int = 512,
                     device: torch.device | str = "cpu") -> Path:
    """Token grids (N, h*w) int16 of ``n`` training renders (hold-out pairs excluded) + their recipes
    (the VQGAN encoder runs on ``device``)."""
    from diffusers import VQModel

    from pipelines.training.vqgan import tokenize
    from pipelines.worlds import shapes

    vq = VQModel.from_pretrained(vqgan_dir, use_safetensors=True).eval().to(device)
    rng = np.random.default_rng(seed)
    recipes = [shapes.sample_recipe(rng, holdout="exclude") for _ in range(n)]
    bar = common.progress(n, desc="tokens")
    grids = []
    for i in range(0, n, chunk):
        grids.append(tokenize(vq, shapes.render_batch(recipes[i:i + chunk])).flatten(1).to(torch.int16).cpu())
        bar.update(len(grids[-1]))
    bar.close()
    idx, jitter = lat.recipes_to_tensor(recipes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"tokens": torch.cat(grids), "recipes": idx, "jitter": jitter, "seed": seed,
                "vqgan_hash": lat.file_hash(vqgan_dir)}, tmp)
    tmp.replace(out)
    return out


def prior_config(args: argparse.Namespace, vocab: int, grid: int, text_dim: int) -> dict[str, Any]:
    return {"vocab_size": vocab, "grid_size": grid, "width": args.width, "layers": args.layers, "heads": args.heads,
            "text_dim": text_dim, "mlp_ratio": 4}


def export_pack(run_dir: Path, out: Path, vqgan_dir: Path, text: Path) -> Path:
    """The EMA prior of ``<run-dir>/checkpoint.pt`` + the VQGAN + the text parts as one model folder."""
    from diffusers import VQModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from pipelines.token_prior import TokenPriorTransformer, save_token_prior_folder

    prior, state = common.trained_model(TokenPriorTransformer, run_dir, "prior_config")
    save_token_prior_folder(out, VQModel.from_pretrained(vqgan_dir, use_safetensors=True), prior,
                            CLIPTextModel.from_pretrained(text / "text_encoder", use_safetensors=True),
                            CLIPTokenizer.from_pretrained(text / "tokenizer"))
    for part in ("text_encoder", "tokenizer"):  # the exact exported files (shared with the shapes-ldm when shipped)
        shutil.rmtree(Path(out) / part)
        shutil.copytree(text / part, Path(out) / part)
    common.write_training_info(out, state, "prior_config", step_key="prior_step")
    return Path(out)


def main(args: argparse.Namespace) -> dict[str, float]:
    """Train (resumably); export the model folder to ``--out`` (default ``<run-dir>/pack``) at the end."""
    from pipelines.token_prior import TokenPriorTransformer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    vqgan_dir = Path(args.vqgan_dir)
    if not (vqgan_dir / "config.json").is_file():
        raise SystemExit(f"--vqgan-dir {vqgan_dir}: no VQModel there (train one: python -m pipelines.train vqgan)")
    text = prepare_text(args)
    table = lat.CaptionTable.build(text / "text_encoder", text / "tokenizer", cache=run_dir / "captions.pt")
    pool_path = run_dir / "tokens.pt"
    vq_hash = lat.file_hash(vqgan_dir)
    if not pool_path.is_file() or torch.load(pool_path, weights_only=True).get("vqgan_hash") != vq_hash:
        build_token_pool(vqgan_dir, pool_path, args.pool, seed=args.seed + 20_000, device=device)
    pool = torch.load(pool_path, map_location="cpu", weights_only=True)
    tokens = pool["tokens"].long().to(device)
    table.embeddings = table.embeddings.to(device)  # lookups then index it where it lives
    vq_cfg = json.loads((vqgan_dir / "config.json").read_text())
    grid = int(round(tokens.shape[1] ** 0.5))
    cfg = prior_config(args, int(vq_cfg["num_vq_embeddings"]), grid, int(table.embeddings.shape[-1]))
    prior = TokenPriorTransformer(**cfg).train()
    n_params = sum(p.numel() for p in prior.parameters())
    optimizer = torch.optim.AdamW(common.decay_groups(prior, 0.01), lr=args.lr, betas=(0.9, 0.95))
    ema = common.EMA(prior, decay=args.ema_decay)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    extra = {"prior_config": json.dumps(cfg), "vqgan_hash": vq_hash, "text_hash": lat.file_hash(text / "text_encoder")}
    start = 0
    if args.resume:
        state = ckpt.load(prior, optimizer, ema)
        if state is not None:
            start = int(state["step"])
            if state["extra"].get("vqgan_hash") != vq_hash:
                raise SystemExit("checkpoint was trained on another VQGAN's tokens: start a fresh run")
    prior.to(device)
    _optimizer_to(optimizer, device)
    ema.shadow = {k: v.to(device) for k, v in ema.shadow.items()}
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    (run_dir / "config.json").write_text(json.dumps({"prior": cfg, "params": n_params,
                                                     "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    bar = common.progress(args.steps, initial=start, desc=f"prior {n_params / 1e6:.1f}M")
    budget = common.TimeBudget(args.time_budget, start)
    bos = torch.full((args.batch_size, 1), cfg["vocab_size"], dtype=torch.long, device=device)
    t0 = time.time()
    for step in range(start, stop):
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=0.05)
        common.set_lr(optimizer, lr)
        rng = common.step_rng(args.seed, step)
        rows = rng.integers(len(tokens), size=args.batch_size)
        captions = sample_captions(pool, rows, rng, args.drop_prob, args.uncond_prob)
        target = tokens[torch.from_numpy(rows).to(device)]
        logits = prior(torch.cat([bos, target[:, :-1]], dim=1), text_states=table.lookup(captions))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = common.clip_grad(prior.parameters(), 1.0)
        optimizer.step()
        ema.decay = min(args.ema_decay, (1 + step) / (10 + step))
        ema.update(prior)
        log.log(step + 1, loss=loss.item(), lr=lr, grad_norm=gnorm)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        stop = common.fit_budget(budget, step + 1, args, bar, extra, stop)
        if ckpt.due(step + 1) or step + 1 == stop:
            ema.decay = args.ema_decay
            ckpt.save(step + 1, prior, optimizer, ema, extra=extra)
        if step + 1 >= stop:
            break
    bar.close()
    result = {"steps_done": float(stop), "train_seconds": time.time() - t0, "params": float(n_params)}
    if common.stopped_early(stop, args):
        return result
    export_pack(run_dir, Path(args.out) if args.out is not None else run_dir / "pack", vqgan_dir, text)
    print(json.dumps(result))
    return result
