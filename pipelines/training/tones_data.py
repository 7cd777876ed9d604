"""Training data of the builtin audio model (tones-ldm): a cached pool of Tones clips as log-mel spectrograms.

The builtin model works on the spectrogram its Griffin-Lim vocoder inverts: 128 mel bands (0-8 kHz), n_fft 1024,
hop 256 (16 ms), natural-log magnitudes floored at 1e-5 (AudioLDM's convention). Measured on 48 ground-truth
Tones clips (one per waveform x pitch x rhythm), mel -> Griffin-Lim (32 iterations) -> the Tones judge reads 100%
of waveform, pitch, rhythm and loudness, 0.45 s a clip on 2 CPU cores; 80 mels read 94% of waveforms and 64 mels
79% (harmonics of low tones merge), so 128 it is. A 2 s clip is 126 frames, padded with silence to 128 so a VAE
with 3 downsamplings maps it to a 16 x 16 latent (AudioLDMPipeline rounds 2 s up to 128 frames the same way).

Spectrograms are stored as AudioLDM's VAE reads them: (frames, n_mels), time down the rows. Each clip's recipe
is kept (attribute indices, not a caption), so captions are re-sampled with random dropping at every step.
Rendering is a pure function of the seed, so a pool is reproducible.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipelines.audio import MelConfig

MEL = MelConfig(n_mels=128, n_fft=1024, hop=256)  # what the vocoder of tones-ldm inverts
FRAMES = 128  # 2 s = 126 frames, padded to a multiple of 8
GL_ITERATIONS = 32
FIELDS = ("waveform", "pitch", "rhythm", "loudness")


def vocab() -> dict[str, list[str]]:
    from pipelines.worlds import tones

    return {"waveform": list(tones.WAVEFORMS), "pitch": list(tones.PITCHES), "rhythm": list(tones.RHYTHMS),
            "loudness": list(tones.LOUDNESS)}


def clip_mel(y: np.ndarray, frames: int = FRAMES) -> np.ndarray:
    """(frames, n_mels) float32 log-mel of a 16 kHz clip, cut or padded with the floor (silence)."""
    from pipelines.audio import log_mel

    m = log_mel(y, MEL).T  # (t, n_mels)
    out = np.full((frames, MEL.n_mels), np.log(MEL.floor), np.float32)
    out[:min(frames, len(m))] = m[:frames]
    return out


def _render_chunk(recipes: Sequence[Any]) -> np.ndarray:
    from pipelines.worlds import tones

    return np.stack([clip_mel(tones.render(r)) for r in recipes]).astype(np.float16)


def recipes_to_tensor(recipes: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Attribute indices (N, 4) int16 and (freq, level) (N, 2) float32 of ``ToneRecipe`` s."""
    v = vocab()
    idx = torch.tensor([[v[f].index(getattr(r, f)) for f in FIELDS] for r in recipes], dtype=torch.int16)
    cont = torch.tensor([[r.freq, r.level] for r in recipes], dtype=torch.float32)
    return idx, cont


def tensor_to_recipe(idx: Any, cont: Any = None, seed: int = 0) -> Any:
    """A ``ToneRecipe`` from one row of :func:`recipes_to_tensor` (frequency and level when given)."""
    from pipelines.worlds import tones

    v = vocab()
    names = [v[f][int(i)] for f, i in zip(FIELDS, idx)]
    freq, level = (float(cont[0]), float(cont[1])) if cont is not None else (0.0, 0.0)
    return tones.ToneRecipe(*names, freq=freq, level=level, seed=seed)


def build_pool(out: Path, n: int, seed: int, workers: int = 2, chunk: int = 64) -> Path:
    """Render ``n`` clips from recipes drawn with ``seed``; save their mels (fp16) and recipes to ``out``."""
    from pipelines.training.common import progress
    from pipelines.worlds import tones

    rng = np.random.default_rng(seed)
    recipes = [tones.sample_recipe(rng) for _ in range(n)]
    chunks = [recipes[i:i + chunk] for i in range(0, n, chunk)]
    mels = []
    bar = progress(n, desc="tones pool")
    with contextlib.ExitStack() as stack:
        if workers > 1:
            import multiprocessing

            pool = stack.enter_context(multiprocessing.get_context("fork").Pool(workers))
            rendered = pool.imap(_render_chunk, chunks)
        else:
            rendered = map(_render_chunk, chunks)
        for m in rendered:
            mels.append(torch.from_numpy(m))
            bar.update(len(m))
    bar.close()
    idx, cont = recipes_to_tensor(recipes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({"mels": torch.cat(mels), "recipes": idx, "cont": cont, "seed": seed,
                "mel": {"n_mels": MEL.n_mels, "n_fft": MEL.n_fft, "hop": MEL.hop, "frames": FRAMES}}, tmp)
    tmp.replace(out)
    return out


def load_pool(path: Path, n: int, seed: int, workers: int = 2) -> dict[str, Any]:
    """The pool at ``path`` (built first when missing or of another size/seed); ``weights_only`` loading."""
    path = Path(path)
    if path.is_file():
        pool = torch.load(path, map_location="cpu", weights_only=True)
        if len(pool["mels"]) == n and int(pool["seed"]) == seed:
            return pool
    build_pool(path, n, seed, workers)
    return torch.load(path, map_location="cpu", weights_only=True)


def all_captions() -> list[str]:
    """Every caption :func:`tones.caption` can write (loudness and rhythm each kept or dropped), plus ""."""
    from pipelines.worlds import tones

    out = [""]
    for w in tones.WAVEFORMS:
        for p in tones.PITCHES:
            for loud in (None, *tones.LOUDNESS):
                for rhythm in (None, *tones.RHYTHMS):
                    words = ["a"] + ([loud] if loud else []) + [p, tones.WAVEFORM_PHRASES[w]]
                    words += [tones.RHYTHM_PHRASES[rhythm]] if rhythm else []
                    out.append(" ".join(words))
    return out


def eval_clips(n: int = 48) -> tuple[list[Any], list[np.ndarray]]:
    """The first ``n`` evaluation recipes (48 = one per waveform x pitch x rhythm) and their clips."""
    from pipelines.worlds import tones

    recipes = tones.eval_prompts()[:n]
    return recipes, [tones.render(r) for r in recipes]
