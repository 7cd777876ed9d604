"""Does a video model read the direction in its caption?  ``python -m pipelines.training.motion_probe PACK``

Sampling is slow on CPU and a model that ignores the direction word fails the judge the same way whatever
else it learnt, so this measures the cause directly: real Motion clips are noised at a few timesteps and
denoised under their true caption and under the same caption with each other direction word ("moving left"
-> "moving up", ...). A model that uses the direction predicts the noise better under the true caption:
the probe reports the mean relative gap ``(mean wrong loss - true loss) / true loss`` and how often the true
caption has the lowest loss (chance: 1 in 5). It also prints how far apart the text tower puts the five
direction captions, next to two colours, in the per-token states the UNet attends to, and how much the model
uses frame order: the relative difference between its prediction for the time-reversed clip and its
prediction for the clip, reversed (0 for a model that cannot tell the frames' order, which therefore cannot
tell "left" from "right").
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _load(pack: Path) -> tuple[Any, Any, Any]:
    from transformers import CLIPTextModel, CLIPTokenizer

    from pipelines.training.motion import packed_unet

    text = CLIPTextModel.from_pretrained(pack / "text_encoder", dtype=torch.float32, use_safetensors=True)
    return packed_unet(pack).eval(), text.eval(), CLIPTokenizer.from_pretrained(pack / "tokenizer")


@torch.no_grad()
def _states(text: Any, tok: Any, captions: list[str]) -> torch.Tensor:
    from pipelines.training.latents import prompt_ids

    return text(prompt_ids(tok, captions))[0].float()


def text_separation(text: Any, tok: Any) -> dict[str, float]:
    """Largest per-token distance between captions that differ in one word, over the mean token norm."""
    from pipelines.worlds import motion

    def spread(captions: list[str]) -> float:
        h = _states(text, tok, captions)
        d = [(h[i] - h[j]).norm(dim=-1).max() for i in range(len(h)) for j in range(i + 1, len(h))]
        return float(torch.stack(d).mean() / h.norm(dim=-1).mean())

    return {"directions": spread([f"a red circle {motion.motion_phrase(d)} on a black background"
                                  for d in motion.DIRECTIONS]),
            "colours": spread([f"a {c} circle moving left on a black background" for c in ("red", "blue")])}


@torch.no_grad()
def probe(pack: Path, clips: int = 24, timesteps: tuple[int, ...] = (500, 800, 950), seed: int = 0,
          frames: int | None = None) -> dict[str, Any]:
    """Caption sensitivity of the video model in ``pack`` on ``clips`` fresh Motion clips."""
    from diffusers import DDPMScheduler

    from pipelines.training.ldm import SCHEDULER_CFG
    from pipelines.training.motion_data import build_pool, caption_from_codes
    from pipelines.worlds import motion

    unet, text, tok = _load(pack)
    settings = json.loads((pack / "default_settings.json").read_text()) if (pack / "default_settings.json").is_file() else {}
    frames = int(frames or settings.get("num_frames", 16))
    with tempfile.TemporaryDirectory() as tmp:
        pool = torch.load(build_pool(pack / "vae", Path(tmp) / "probe.pt", clips, frames, seed=seed + 777,
                                     growth_prob=0.0), map_location="cpu", weights_only=True)
    sched = DDPMScheduler(**SCHEDULER_CFG)
    gen = torch.Generator().manual_seed(seed)
    gaps: dict[int, list[float]] = {t: [] for t in timesteps}
    wins: dict[int, list[bool]] = {t: [] for t in timesteps}
    order: dict[int, list[float]] = {t: [] for t in timesteps}
    for x0, codes in zip(pool["latents"].float(), pool["codes"]):
        true_dir = int(codes[3])
        captions = []
        for d in range(len(motion.DIRECTIONS)):
            c = codes.clone()
            c[3] = d
            captions.append(caption_from_codes(c, None, 0.0))
        cond = _states(text, tok, captions).repeat_interleave(frames, dim=0)
        clip = x0.permute(1, 0, 2, 3).unsqueeze(0)                       # (1, C, F, H, W)
        for t in timesteps:
            noise = torch.randn(clip.shape, generator=gen)
            noisy = sched.add_noise(clip, noise, torch.tensor([t])).expand(len(captions), -1, -1, -1, -1)
            pred = unet(noisy, torch.full((len(captions),), t), encoder_hidden_states=cond).sample
            loss = ((pred - noise) ** 2).mean(dim=(1, 2, 3, 4))
            wrong = torch.cat([loss[:true_dir], loss[true_dir + 1:]])
            gaps[t].append(float((wrong.mean() - loss[true_dir]) / loss[true_dir]))
            wins[t].append(int(loss.argmin()) == true_dir)
            mine = pred[true_dir:true_dir + 1]
            flipped = unet(noisy[true_dir:true_dir + 1].flip(2), torch.tensor([t]),
                           encoder_hidden_states=cond[true_dir * frames:(true_dir + 1) * frames]).sample.flip(2)
            order[t].append(float((flipped - mine).norm() / mine.norm()))
    return {"pack": str(pack), "clips": clips, "frames": frames,
            "gap": {t: float(np.mean(v)) for t, v in gaps.items()},
            "true_caption_lowest": {t: float(np.mean(v)) for t, v in wins.items()},
            "time_reversal_difference": {t: float(np.mean(v)) for t, v in order.items()},
            "text_separation": text_separation(text, tok)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m pipelines.training.motion_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("pack", type=Path, help="an AnimateDiffPipeline folder (python -m pipelines.training.motion pack)")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--timesteps", type=str, default="500,800,950")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if not (a.pack / "motion_adapter").is_dir():
        p.error(f"{a.pack} is not a packed video model (no motion_adapter/ in it)")
    torch.set_num_threads(a.threads)
    out = probe(a.pack, a.clips, tuple(int(t) for t in a.timesteps.split(",")), a.seed)
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
