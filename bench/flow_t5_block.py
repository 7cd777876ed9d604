"""The zero T5 block of an SD3-format flow model without T5: ``python -m bench.flow_t5_block [--batch 32]``.

``StableDiffusion3Pipeline`` without T5 appends ``max_sequence_length`` zero tokens (256 by default) to the prompt
embeddings, and every joint-attention block carries them. ``python -m pipelines.train flow`` now trains with
``--t5-tokens`` (8 by default) and writes that length into the pack's ``default_settings.json``. This times one
training step (forward + backward) and one guided sampling step of the trainer's default transformer with a
256-token and an 8-token block, interleaved in one run, and prints the ratios (old / new).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bench.report import emit


def _model(hidden: int, layers: int, head_dim: int, text_dim: int, pooled_dim: int):
    from diffusers import SD3Transformer2DModel

    from pipelines.training.flow import transformer_config

    return SD3Transformer2DModel(**transformer_config(hidden, layers, head_dim, text_dim, pooled_dim)).float()


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(prog="python -m bench.flow_t5_block", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    clip_tokens, text_dim, pooled_dim = 32, 256, 256  # the builtin text tower in both CLIP slots
    model = _model(192, 6, 32, text_dim, pooled_dim)
    x = torch.randn(a.batch, 4, 16, 16)
    clip = torch.randn(a.batch, clip_tokens, text_dim)
    pooled = torch.randn(a.batch, pooled_dim)
    t = torch.rand(a.batch) * 1000

    def context(n: int, batch: int) -> torch.Tensor:
        return torch.cat([clip[:batch], torch.zeros(batch, n, text_dim)], dim=1)

    def train_step(n: int) -> float:
        start = time.perf_counter()
        out = model(hidden_states=x, encoder_hidden_states=context(n, a.batch), pooled_projections=pooled,
                    timestep=t).sample
        out.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    @torch.no_grad()
    def sample_step(n: int) -> float:  # one guided step of one image: cond + uncond in one batch
        start = time.perf_counter()
        model(hidden_states=x[:2], encoder_hidden_states=context(n, 2), pooled_projections=pooled[:2],
              timestep=t[:2])
        return time.perf_counter() - start

    for n in (256, 8):  # warm-up
        train_step(n)
        sample_step(n)
    times: dict[str, list[float]] = {k: [] for k in ("train_256", "train_8", "sample_256", "sample_8")}
    for _ in range(a.repeats):
        for n in (256, 8):
            times[f"train_{n}"].append(train_step(n))
            times[f"sample_{n}"].append(sample_step(n))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {**{f"{k}_s": round(v, 4) for k, v in med.items()},
           "train_ratio_256_over_8": round(med["train_256"] / med["train_8"], 2),
           "sample_ratio_256_over_8": round(med["sample_256"] / med["sample_8"], 2),
           "batch": a.batch, "threads": a.threads}
    print(json.dumps(out, indent=2))
    emit("flow_t5_block", "flow training step, 256-token / 8-token zero T5 block", out["train_ratio_256_over_8"], "x")
    emit("flow_t5_block", "flow guided sampling step, 256 / 8", out["sample_ratio_256_over_8"], "x")
    return out


if __name__ == "__main__":
    main()
