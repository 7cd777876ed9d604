"""The VQGAN tokenizer's training target: trains, resumes, exports a diffusers VQModel with metrics."""
import json

import torch

from pipelines.train import main as train_main
from pipelines.training.vae import render_renders
from pipelines.training.vqgan import PatchDiscriminator, tokenize

TINY = ["--widths", "8,16,16", "--codebook", "32", "--batch-size", "4", "--checkpoint-every", "2"]


def test_vqgan_trains_resumes_and_exports(tmp_path):
    from diffusers import VQModel

    run = tmp_path / "vq"
    stopped = train_main(["vqgan", "--run-dir", str(run), "--steps", "4", "--stop-at", "2", "--disc-start", "1",
                          *TINY])
    assert stopped["steps_done"] == 2 and not (run / "vqgan").exists()
    result = train_main(["vqgan", "--run-dir", str(run), "--steps", "4", "--disc-start", "1", "--resume", *TINY])
    losses = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses] == [1, 2, 3, 4] and "d" in losses[-1]  # the discriminator took part
    vq = VQModel.from_pretrained(run / "vqgan")
    metrics = json.loads((run / "vqgan" / "metrics.json").read_text())
    assert metrics["psnr"] == result["psnr"] > 0 and 1 <= metrics["codes_used"] <= 32
    grids = tokenize(vq, render_renders(1, 3))
    assert grids.shape == (3, 16, 16) and int(grids.max()) < 32
    assert PatchDiscriminator()(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 16, 16)
