"""The VQGAN tokenizer's training target: trains, resumes, exports a diffusers VQModel with metrics."""
import json

import torch

from pipelines.train import main as train_main
from pipelines.training.vae import render_renders
from pipelines.training.vqgan import PatchDiscriminator, tokenize

TINY = ["--widths", "8,16,16", "--codebook", "32", "--batch-size", "4", "--checkpoint-every", "2", "--restart-every", "1"]


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


def test_dead_codes_restart_onto_encoder_outputs():
    from diffusers import VQModel

    from pipelines.training.vqgan import restart_dead_codes, vq_config

    vq = VQModel(**vq_config((8, 16, 16), codebook=8))
    before = vq.quantize.embedding.weight.detach().clone()
    usage = torch.tensor([3, 0, 1, 0, 0, 2, 0, 0])
    latents = torch.randn(2, 4, 4, 4)
    moved = restart_dead_codes(vq, usage, latents, torch.Generator().manual_seed(0))
    after = vq.quantize.embedding.weight.detach()
    assert moved == 5 and torch.equal(after[[0, 2, 5]], before[[0, 2, 5]])
    vectors = latents.permute(0, 2, 3, 1).reshape(-1, 4)
    for k in (1, 3, 4, 6, 7):  # each dead code now sits (almost) on one of the batch's encoder outputs
        assert (vectors - after[k]).norm(dim=1).min() < 0.01
