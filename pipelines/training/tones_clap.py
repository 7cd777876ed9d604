"""Train the text encoder of tones-ldm, a tiny CLAP: ``python -m pipelines.train tones_clap``.

AudioLDM conditions its UNet on CLAP's projected, L2-normalised text embedding (Wu et al. 2023, "Large-scale
Contrastive Language-Audio Pretraining"; Liu et al. 2023, AudioLDM), so the builtin model has one too: a
transformers ``ClapTextModelWithProjection`` (RoBERTa-style, 2 layers, width 64, 64-d projection) trained
contrastively against a small convolutional encoder of the log-mel spectrogram on Tones clips, as the repo's
mini-CLIP is trained against Shapes renders. Only the text tower ships (``AudioLDMPipeline`` never runs the
audio tower); it is computed exactly as the pipeline's ``_encode_prompt`` does (``padding="max_length"``,
attention mask, ``text_embeds``, then L2 normalisation).

Captions follow the world's grammar with loudness and rhythm dropped at ``--drop-prob``; a caption that omits
an attribute is true of many clips of a batch, so targets are multi-positive (every caption true of a clip is a
positive, uniform soft labels; UniCL, Yang et al. 2022), as in :mod:`pipelines.training.clip`.

The tokenizer is a byte-level BPE ``RobertaTokenizer`` whose merges spell every word of the Tones vocabulary
(and :func:`pipelines.worlds.tones.parse_prompt`'s synonyms) as one token; any other text falls back to byte
tokens, so nothing is unknown. It is written to ``<out>/tokenizer`` beside ``<out>/text_encoder``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.training import common, tones_data as data

MAX_LENGTH = 16  # tokens, <s> and </s> included (the longest caption is 9)
WORDS = ("a", "soft", "loud", "low", "mid", "high", "sine", "tone", "square", "wave", "sawtooth", "noise",
         "burst", "held", "steady", "pulsing", "rising", "falling", "middle", "saw", "noisy", "pulse", "pulses",
         "beat", "rises", "falls", "quiet", "sound", "an", "of", "and", "with")
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


def write_tokenizer(folder: Path) -> Path:
    """A ``RobertaTokenizer`` (vocab.json + merges.txt) with one token per Tones word; returns ``folder``."""
    from transformers import RobertaTokenizer

    from pipelines.clip_vocab import _bytes_to_unicode

    symbols = list(SPECIALS) + list(_bytes_to_unicode().values())
    merges: list[str] = []
    # Space-prefixed words first: their chains outrank the bare ones, so "Ġsine" never splits as "Ġ" + "sine".
    for form in [f"Ġ{w}" for w in WORDS] + list(WORDS):
        for i in range(2, len(form) + 1):
            merge = f"{form[:i - 1]} {form[i - 1]}"
            if merge not in merges:
                merges.append(merge)
            if form[:i] not in symbols:
                symbols.append(form[:i])
    folder = Path(folder)
    tmp = folder.parent / (folder.name + ".src")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps({s: i for i, s in enumerate(symbols)}, ensure_ascii=False))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = RobertaTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=MAX_LENGTH)
    tokenizer.save_pretrained(folder)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    return folder


def text_config(vocab_size: int, width: int = 64, layers: int = 2, dim: int = 64) -> Any:
    from transformers import ClapTextConfig

    return ClapTextConfig(vocab_size=vocab_size, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=2 * width, max_position_embeddings=MAX_LENGTH + 4, projection_dim=dim,
                          type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                          projection_hidden_act="relu")


class MelEncoder(nn.Module):
    """(B, frames, n_mels) log-mel -> (B, dim): four stride-2 convolutions, then a linear map of the 8x8 grid
    (position kept: pitch is where the energy sits, rhythm is how it changes over time)."""

    def __init__(self, width: int = 32, dim: int = 64) -> None:
        super().__init__()
        chans = [1, width, 2 * width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1] * (data.FRAMES // 16) * (data.MEL.n_mels // 16), dim)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        x = (mels.float().unsqueeze(1) + 5.0) / 4.0  # log-mel spans about -11.5..2.5
        return self.head(self.convs(x).flatten(1))  # (B, 2w, 8, 8) -> (B, dim)


class TinyClap(nn.Module):
    def __init__(self, text: nn.Module, audio: MelEncoder) -> None:
        super().__init__()
        self.text, self.audio = text, audio
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def encode_text(text_encoder: Any, tokenizer: Any, captions: list[str]) -> torch.Tensor:
    """Unit-norm text embeddings (N, dim), as ``AudioLDMPipeline._encode_prompt`` computes them."""
    enc = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    out = text_encoder(enc.input_ids, attention_mask=enc.attention_mask).text_embeds
    return F.normalize(out, dim=-1)


def positives(idx: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """(clips, captions) bool: caption j states nothing that contradicts clip i's recipe."""
    from pipelines.worlds import tones

    v = data.vocab()
    ok = np.ones((len(idx), len(captions)), dtype=bool)
    for j, text in enumerate(captions):
        for key, value in tones.parse_prompt(text).items():
            ok[:, j] &= idx[:, data.FIELDS.index(key)].numpy() == v[key].index(value)
    return torch.from_numpy(ok)


def multi_positive_loss(a: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    logits = scale * a @ t.T  # (clips, captions)
    p = pos.float()
    loss_a = -((p / p.sum(1, keepdim=True)) * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -((p.T / p.T.sum(1, keepdim=True)) * F.log_softmax(logits.T, 1)).sum(1).mean()
    return (loss_a + loss_t) / 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(steps=500, batch_size=96, lr=2e-3, checkpoint_every=100)
    parser.add_argument("--pool-path", type=Path, default=Path("runs/tones/pool.pt"))
    parser.add_argument("--pool", type=int, default=6000)
    parser.add_argument("--pool-seed", type=int, default=1234)
    parser.add_argument("--width", type=int, default=64, help="text tower width")
    parser.add_argument("--layers", type=int, default=2, help="text tower layers")
    parser.add_argument("--dim", type=int, default=64, help="projection (embedding) size")
    parser.add_argument("--audio-width", type=int, default=16)
    parser.add_argument("--drop-prob", type=float, default=0.4, help="loudness / rhythm phrase dropping")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--eval-clips", type=int, default=96)


@torch.no_grad()
def zero_shot(model: TinyClap, tokenizer: Any, n: int = 96) -> dict[str, float]:
    """Per attribute: share of evaluation clips whose full caption beats the same caption with that attribute
    changed to each other value (audio tower vs text tower)."""
    from pipelines.worlds import tones

    recipes, clips = data.eval_clips(n)
    a = F.normalize(model.audio(torch.from_numpy(np.stack([data.clip_mel(c) for c in clips]))), dim=-1)
    v = data.vocab()
    out = {}
    for key in data.FIELDS:
        right = 0
        for i, r in enumerate(recipes):
            options = [tones.caption(tones.ToneRecipe(**{**r.__dict__, key: value})) for value in v[key]]
            t = encode_text(model.text, tokenizer, options)
            right += int(v[key][int((t @ a[i]).argmax())] == getattr(r, key))
        out[key] = right / len(recipes)
    return out


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (resumably); export the text tower and tokenizer to ``--out`` (default ``<run-dir>/out``)."""
    from transformers import ClapTextModelWithProjection, RobertaTokenizer

    from pipelines.worlds import tones

    torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out is not None else run_dir / "out"
    tokenizer = RobertaTokenizer.from_pretrained(write_tokenizer(out / "tokenizer"))
    pool = data.load_pool(args.pool_path, args.pool, args.pool_seed)
    cfg = text_config(len(tokenizer), args.width, args.layers, args.dim)
    model = TinyClap(ClapTextModelWithProjection(cfg), MelEncoder(args.audio_width, args.dim)).train()
    optimizer = torch.optim.AdamW(common.decay_groups(model, 0.05), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    ckpt = common.Checkpointer(run_dir, every=args.checkpoint_every)
    start = 0
    if args.resume:
        state = ckpt.load(model, optimizer)
        start = int(state["step"]) if state else 0
    log = common.LossLog(run_dir / "loss.jsonl", resume_step=start if args.resume else None)
    stop = min(args.steps, args.stop_at) if args.stop_at is not None else args.steps
    bar = common.progress(args.steps, initial=start, desc="tones-clap")
    t0 = time.time()
    for step in range(start, stop):
        lr = common.cosine_lr(step, args.lr, args.steps, args.warmup, min_ratio=0.05)
        common.set_lr(optimizer, lr)
        rng = common.step_rng(args.seed, step)
        rows = torch.from_numpy(rng.integers(len(pool["mels"]), size=args.batch_size))
        idx = pool["recipes"][rows]
        captions = [tones.caption(data.tensor_to_recipe(r), rng, args.drop_prob) for r in idx]
        a = F.normalize(model.audio(pool["mels"][rows]), dim=-1)
        t = encode_text(model.text, tokenizer, captions)
        loss = multi_positive_loss(a, t, model.logit_scale.exp(), positives(idx, captions))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = common.clip_grad(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        log.log(step + 1, loss=loss.item(), lr=lr, grad_norm=gnorm, logit_scale=model.logit_scale.exp().item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", refresh=False)
        if ckpt.due(step + 1) or step + 1 == stop:
            ckpt.save(step + 1, model, optimizer, extra={"text_config": cfg.to_json_string()})
    bar.close()
    result: dict[str, Any] = {"steps_done": stop, "train_seconds": time.time() - t0}
    if common.stopped_early(stop, args):
        return result
    model.eval()
    model.text.save_pretrained(out / "text_encoder", safe_serialization=True)
    if args.eval_clips > 0:
        result["zero_shot"] = zero_shot(model, tokenizer, args.eval_clips)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return result
