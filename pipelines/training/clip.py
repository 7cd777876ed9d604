"""Train the builtin mini-CLIP ("shapes-clip") on freshly rendered Shapes batches.

Contrastive image-text pre-training as in CLIP (Radford et al. 2021) with open_clip's
``ClipLoss``. Each step renders a new batch (hold-out colour/shape pairs excluded; rendering
takes ~0.1 ms per image) from an RNG seeded by ``(seed, step)``, so resumed runs see the same
data. Half the captions are the world's captions with random dropping, half name a single
attribute ("a red shape", "a circle", "a shape on the left") so each attribute is aligned on
its own, as the zero-shot prompts require. Batches come in groups of 8 renders that share all
attributes but the shape, the position or the colour, so that the in-batch negatives
are hard ones (what makes shape and position learnable in minutes on a CPU). Short captions
are true of many images in a batch, so by default the targets are multi-positive: every
caption true of an image counts as a positive (soft targets as in UniCL, Yang et al. 2022);
with only distinct full captions this is exactly ``ClipLoss``.

``--lock-text-from DIR`` is the second stage: the text tower of a saved shapes-clip is copied
and frozen (the shapes-ldm is conditioned on exactly that tower, so it must never change once
the LDM is trained on it), and only the image tower and the temperature learn. This is LiT
(Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning") with the roles of
the towers swapped; it keeps the text side fixed while a bigger image tower catches up on shape.

For a UI (the studio's Train tab) the run folder holds ``status.json`` and honours ``stop.request``
(:class:`pipelines.training.monitor.RunMonitor`); ``--sample-every N`` adds a zero-shot grid every N steps and
at the last step (``samples/step_000200.png`` + ``samples.jsonl``, :class:`ZeroShotGrids`).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from pipelines import mini_clip
from pipelines.training.common import (EMA, Checkpointer, LossLog, clip_grad, cosine_lr, decay_groups, progress,
                                       seed_everything, set_lr, step_rng, stopped_early)
from pipelines.training.monitor import RunMonitor

DEFAULT_OUT = Path("assets/clip/shapes-clip")
EVAL_SEED = 20_250_101  # distinct from any training seed's step streams
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "colour": ("a {} shape", "a {} object", "something {}"),
    "shape": ("a {}", "a {} shape", "the {}"),
    "position": ("a shape {}", "something {}", "an object {}"),
    "background": ("a shape on a {} background", "something on a {} background", "a {} background"),
    "size": ("a {} shape", "a {} object", "something {}"),
}
SINGLE_WEIGHTS: dict[str, float] = {"colour": 0.1, "shape": 0.35, "position": 0.3, "background": 0.1, "size": 0.15}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipelines.train clip`` (and defaults of the shared ones)."""
    parser.set_defaults(steps=1000, batch_size=256, lr=1.5e-3, out=DEFAULT_OUT)
    parser.add_argument("--warmup", type=int, default=100, help="linear LR warm-up steps")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--grad-clip", type=float, default=1.0)
    parser.add_argument("--single-prob", type=float, default=0.5, help="share of single-attribute captions")
    parser.add_argument("--drop-prob", type=float, default=0.3, help="caption part drop probability")
    parser.add_argument("--group-size", type=int, default=8,
                        help="renders per group sharing all attributes but one or two (1: independent)")
    parser.add_argument("--loss", choices=("multi", "clip"), default="multi",
                        help="multi-positive targets, or plain ClipLoss (diagonal targets)")
    parser.add_argument("--ema", type=float, default=0.0, help="EMA decay of the exported weights (0: off)")
    parser.add_argument("--eval-every", type=int, default=0, help="quick zero-shot check every N steps")
    parser.add_argument("--eval-n", type=int, default=1000, help="renders per final evaluation split")
    parser.add_argument("--vision-width", type=int, default=mini_clip.MODEL_CFG["vision_cfg"]["width"],
                        help="image tower (ModifiedResNet) width")
    parser.add_argument("--lock-text-from", type=Path, default=None,
                        help="copy the text tower of this saved shapes-clip and keep it frozen (LiT-style)")
    parser.add_argument("--sample-every", type=int, default=0,
                        help="steps between zero-shot grids of 8 held-out renders (0: off); also one at the end")


class MultiPositiveClipLoss(ClipLoss):
    """``ClipLoss`` whose targets may mark several positives per row (uniform soft labels)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                positives: torch.Tensor | None = None, output_dict: bool = False) -> Any:
        if positives is None:
            return super().forward(image_features, text_features, logit_scale, output_dict=output_dict)
        logits_per_image, logits_per_text = self.get_logits(image_features, text_features, logit_scale)
        t = positives.float()
        loss_i = -((t / t.sum(1, keepdim=True)) * F.log_softmax(logits_per_image, -1)).sum(1).mean()
        loss_t = -((t.T / t.T.sum(1, keepdim=True)) * F.log_softmax(logits_per_text, -1)).sum(1).mean()
        total = (loss_i + loss_t) / 2
        return {"contrastive_loss": total} if output_dict else total


def single_caption(recipe: Any, rng: np.random.Generator) -> str:
    """A caption naming one random attribute of ``recipe`` ("a red shape", "a shape on the left");
    the slow-to-learn spatial attributes (shape, position) are named more often."""
    attribute = str(rng.choice(list(SINGLE_WEIGHTS), p=list(SINGLE_WEIGHTS.values())))
    templates = TRAIN_TEMPLATES[attribute]
    phrase = mini_clip.class_phrase(attribute, getattr(recipe, attribute))
    return templates[int(rng.integers(len(templates)))].format(phrase)


GROUP_VARIES: tuple[tuple[str, ...], ...] = (("shape",), ("position",), ("shape", "position"), ("colour",))


def sample_group(rng: np.random.Generator, size: int) -> list[Any]:
    """``size`` training recipes that share every attribute but one or two (see ``GROUP_VARIES``),
    with jitter drawn independently: hard negatives that differ only in shape, position or colour
    (colour-only groups keep colour and shape disentangled for the hold-out pairs)."""
    from pipelines.worlds import shapes

    base = shapes.sample_recipe(rng, holdout="exclude")
    varies = GROUP_VARIES[int(rng.integers(len(GROUP_VARIES)))]
    fixed = {a: getattr(base, a) for a in ("colour", "shape", "size", "position", "background") if a not in varies}
    group = []
    while len(group) < size:
        r = replace(shapes.sample_recipe(rng, holdout="include"), **fixed)
        if not r.is_holdout:
            group.append(r)
    return group


def make_batch(seed: int, step: int, batch_size: int, single_prob: float = 0.5, drop_prob: float = 0.3,
               group_size: int = 8) -> tuple[list[Any], np.ndarray, list[str]]:
    """(recipes, uint8 renders, captions) for one step, a pure function of (seed, step).

    The batch is made of groups of ``group_size`` recipes (see :func:`sample_group`); hold-out
    colour/shape pairs never occur.
    """
    from pipelines.worlds import shapes

    rng = step_rng(seed, step)
    recipes: list[Any] = []
    while len(recipes) < batch_size:
        recipes += sample_group(rng, min(group_size, batch_size - len(recipes)))
    captions = [single_caption(r, rng) if rng.random() < single_prob else shapes.caption(r, rng, drop_prob)
                for r in recipes]
    return recipes, shapes.render_batch(recipes), captions


def positives_matrix(recipes: list[Any], captions: list[str]) -> torch.Tensor:
    """(images, captions) bool: caption j states nothing that contradicts recipe i."""
    from pipelines.worlds import shapes

    values = {a: np.array([getattr(r, a) for r in recipes]) for a in mini_clip.ATTRIBUTES}
    ok = np.ones((len(recipes), len(captions)), dtype=bool)
    for j, text in enumerate(captions):
        for attribute, value in shapes.parse_prompt(text).items():
            ok[:, j] &= values[attribute] == value
    if len(recipes) == len(captions) and not ok.diagonal().all():
        raise RuntimeError("a caption does not match its own image: caption parsing out of sync")
    return torch.from_numpy(ok)


def encode_text_trimmed(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` without the padding tail: exact for the EOT-pooled output, as the
    causal mask keeps later positions from reaching it; about half the text compute."""
    length = int((ids != mini_clip.PAD_ID).sum(1).max())
    ids = ids[:, :length]
    x = model.token_embedding(ids) + model.positional_embedding[:length]
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ model.text_projection


def heldout_report(model: torch.nn.Module, tokenizer: Any, n: int = 1000, seed: int = EVAL_SEED,
                   splits: tuple[str, ...] = ("seen", "holdout")) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy per attribute on ``n`` fresh renders of seen pairs and of hold-out pairs."""
    from pipelines.worlds import shapes

    report = {}
    for k, (split, mode) in enumerate((("seen", "exclude"), ("holdout", "only"))):
        if split in splits:
            rng = np.random.default_rng([seed, k])
            recipes = [shapes.sample_recipe(rng, holdout=mode) for _ in range(n)]
            report[split] = mini_clip.zero_shot_accuracy(model, tokenizer, recipes, shapes.render_batch(recipes))
    return report


def format_report(report: dict[str, dict[str, float]]) -> str:
    """A small text table: one row per split, one column per attribute."""
    head = f"{'split':<8}" + "".join(f"{a:>12}" for a in mini_clip.ATTRIBUTES)
    rows = [f"{split:<8}" + "".join(f"{100 * acc[a]:>11.1f}%" for a in mini_clip.ATTRIBUTES)
            for split, acc in report.items()]
    return "\n".join([head, *rows])


def candidate_captions() -> list[str]:
    """The zero-shot candidates of the sample grids: every "a <colour> <shape>" caption of the world."""
    from pipelines.worlds import shapes

    return [f"a {c} {s}" for c in shapes.COLOURS for s in shapes.SHAPES]


class ZeroShotGrids:
    """``--sample-every``: :data:`SAMPLE_SHOWN` fixed held-out renders (seen colour/shape pairs, drawn from
    :data:`EVAL_SEED`), each labelled with its top-1 caption among :func:`candidate_captions` and whether that
    names its colour and shape; the title and record give the top-1 accuracy over :data:`SAMPLE_EVAL` such
    renders (the shown ones first). The EMA weights are used when the run keeps an EMA (on a copy of the
    model), else the live ones in eval mode (every module's mode restored afterwards); no gradients, the torch
    RNG forked, so a grid never changes training."""

    def __init__(self, shown: int = 8, n_eval: int = 64, seed: int = EVAL_SEED) -> None:
        from pipelines.worlds import shapes

        rng = np.random.default_rng([seed, 99])  # a stream heldout_report does not draw
        self.recipes = [shapes.sample_recipe(rng, holdout="exclude") for _ in range(max(shown, n_eval))]
        self.images = shapes.render_batch(self.recipes)
        self.shown, self.seed = shown, seed
        self.candidates = candidate_captions()
        self.truth = [f"a {r.colour} {r.shape}" for r in self.recipes]

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, tokenizer: Any) -> list[str]:
        """The top-1 candidate caption of every fixed render."""
        image_emb = mini_clip.encode_images(model, self.images)
        text_emb = F.normalize(model.encode_text(tokenizer(self.candidates)), dim=-1)
        return [self.candidates[i] for i in (image_emb @ text_emb.T).argmax(-1).tolist()]

    def __call__(self, monitor: RunMonitor, step: int, model: torch.nn.Module, tokenizer: Any,
                 ema: EMA | None = None) -> Path:
        from PIL import Image

        from pipelines.training.ldm_samples import sample_grid
        from pipelines.worlds import shapes

        with torch.random.fork_rng(devices=[]):
            if ema is not None:
                averaged = copy.deepcopy(model)
                ema.copy_to(averaged)
                predicted = self.predict(averaged.eval(), tokenizer)
                del averaged
            else:
                modes = [(m, m.training) for m in model.modules()]
                try:
                    predicted = self.predict(model.eval(), tokenizer)
                finally:
                    for module, training in modes:
                        module.training = training
        right = [p == t for p, t in zip(predicted, self.truth)]
        accuracy = float(np.mean(right))
        n, weights = self.shown, "ema" if ema is not None else "live"
        labels = [f"{p}: {'right' if ok else 'wrong'}" for p, ok in zip(predicted[:n], right[:n])]
        title = (f"step {step}  zero-shot top-1 among {len(self.candidates)} 'a <colour> <shape>' captions "
                 f"({weights} weights): {100 * accuracy:.1f}% of {len(right)} held-out renders")
        record = {"prompts": [shapes.caption(r) for r in self.recipes[:n]], "predicted": predicted[:n],
                  "correct": right[:n], "zero_shot_top1": accuracy, "zero_shot_n": len(right),
                  "candidates": len(self.candidates), "kind": "zero-shot", "seed": self.seed, "weights": weights}
        pictures = [Image.fromarray(a) for a in self.images[:n]]
        return monitor.samples.write(step, sample_grid(pictures, labels, title), record)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or resume), checkpoint, evaluate on held-out renders and export to ``args.out``."""
    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    model = mini_clip.create_model(seed=args.seed, vision_width=args.vision_width).train()
    if args.lock_text_from is not None:
        mini_clip.lock_text_tower(model, mini_clip.load_clip(Path(args.lock_text_from)))
    tokenizer = mini_clip.get_tokenizer()
    optimizer = torch.optim.AdamW(decay_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    ema = EMA(model, args.ema) if args.ema > 0 else None
    ckpt = Checkpointer(args.run_dir, args.checkpoint_every)
    state = ckpt.load(model, optimizer, ema) if args.resume else None
    start, elapsed = (state["step"], float(state["extra"].get("elapsed", 0.0))) if state else (0, 0.0)
    if args.resume:
        print(f"resuming from step {start}" if state else f"no checkpoint in {args.run_dir}: starting afresh")
    log = LossLog(Path(args.run_dir) / "loss.jsonl", resume_step=start if state else None)
    stop = args.steps if args.stop_at is None else min(args.steps, args.stop_at)
    monitor = RunMonitor(Path(args.run_dir), args.steps, args.batch_size, start, stop, resume=args.resume)
    with monitor.failures():  # an exception marks status.json "failed"
        return _train(args, model, tokenizer, optimizer, ema, ckpt, log, monitor, start, stop, elapsed)


def _train(args: argparse.Namespace, model: torch.nn.Module, tokenizer: Any, optimizer: torch.optim.Optimizer,
           ema: EMA | None, ckpt: Checkpointer, log: LossLog, monitor: RunMonitor, start: int, stop: int,
           elapsed: float) -> dict[str, Any]:
    """The loop from ``start`` (checkpoints, stop request, sample grids), then evaluation and export."""
    text_locked = args.lock_text_from is not None
    loss_fn = MultiPositiveClipLoss()
    grids = ZeroShotGrids() if args.sample_every > 0 else None
    bar, t0 = progress(args.steps, initial=start, desc="shapes-clip"), time.time()
    for step in range(start, stop):
        t_step = time.time()
        recipes, images, captions = make_batch(args.seed, step, args.batch_size, args.single_prob, args.drop_prob,
                                               args.group_size)
        positives = positives_matrix(recipes, captions) if args.loss == "multi" else None
        lr = cosine_lr(step, args.lr, args.steps, args.warmup)
        set_lr(optimizer, lr)
        image_features = F.normalize(model.encode_image(mini_clip.images_to_tensor(images)), dim=-1)
        with torch.set_grad_enabled(not text_locked):
            text_features = F.normalize(encode_text_trimmed(model, tokenizer(captions)), dim=-1)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp(), positives=positives)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_grad(model.parameters(), args.grad_clip)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # as in CLIP
            logit_scale = model.logit_scale.exp().item()
        if ema is not None:
            ema.update(model)
        record: dict[str, float] = {"loss": loss.item(), "lr": lr, "logit_scale": logit_scale,
                                    "grad_norm": grad_norm, "sec": time.time() - t_step}
        if args.eval_every and (step + 1) % args.eval_every == 0:
            model.eval()
            quick = heldout_report(model, tokenizer, 300, splits=("seen",))["seen"]
            record.update({f"zs_{k}": v for k, v in quick.items()})
            model.train()
            bar.write(f"step {step + 1}: " + " ".join(f"{k}={v:.4g}" for k, v in record.items()))
        log.log(step + 1, **record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{lr:.2e}", refresh=False)
        stop = monitor.after_step(step + 1, record["loss"], stop)  # a stop request makes this the last step
        if ckpt.due(step + 1) and step + 1 < stop:  # the last step's checkpoint is saved below
            ckpt.save(step + 1, model, optimizer, ema, {"elapsed": elapsed + time.time() - t0})
        if grids is not None and monitor.sample_due(step + 1, stop, args.sample_every):
            grids(monitor, step + 1, model, tokenizer, ema)
        if step + 1 >= stop:
            break
    bar.close()
    done = max(start, stop)
    elapsed += time.time() - t0
    ckpt.save(done, model, optimizer, ema, {"elapsed": elapsed})
    print(f"trained to step {done}/{args.steps}; training wall time {elapsed / 60:.1f} min (this run and before)")
    if stopped_early(done, args):  # "stopped at step N/M; resume with --resume"
        monitor.end(done)
        return {"step": done}
    if ema is not None:
        ema.copy_to(model)
    model.eval()
    report = heldout_report(model, tokenizer, args.eval_n)
    print("zero-shot accuracy on held-out renders:\n" + format_report(report))
    (Path(args.run_dir) / "eval.json").write_text(json.dumps(report, indent=2))
    mini_clip.save_clip(model, Path(args.out))
    print(f"exported {args.out}")
    monitor.end(done)  # "finished" once exported
    return {"step": done, "report": report}


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipelines.evaluate shapes-clip``."""
    parser.set_defaults(weights=DEFAULT_OUT, seed=EVAL_SEED)


def evaluate_main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Print zero-shot accuracy per attribute of a saved shapes-clip, seen and hold-out pairs."""
    torch.set_num_threads(args.threads)
    model = mini_clip.load_clip(Path(args.weights))
    report = heldout_report(model, mini_clip.get_tokenizer(), args.n, args.seed)
    print(f"shapes-clip zero-shot accuracy ({args.weights}, {args.n} renders per split):\n" + format_report(report))
    return report
