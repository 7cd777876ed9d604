"""The TAESD distiller (``python -m pipelines.train taesd``) with tiny settings: it trains, exports a diffusers
AutoencoderTiny with the decoder asked for (``--decoder-blocks``, fewer blocks decode faster) and refuses a bad
block list with a message."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines.train import main as train_main


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A random-weight AutoencoderKL that maps 64 px to 16 x 16 x 4, as the builtin VAE does."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4, sample_size=64)
    folder = tmp_path_factory.mktemp("teacher") / "vae"
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def test_a_tiny_run_exports_the_decoder_it_was_asked_for(tiny_teacher, tmp_path):
    from diffusers import AutoencoderTiny

    run = tmp_path / "run"
    train_main(["taesd", "--teacher", str(tiny_teacher), "--run-dir", str(run), "--steps", "3", "--pool", "8",
                "--batch-size", "4", "--warmup", "1", "--decoder-blocks", "1,0,0"])
    out = run / "taesd"
    assert json.loads((out / "config.json").read_text())["num_decoder_blocks"] == [1, 0, 0]
    info = json.loads((out / "training_info.json").read_text())
    assert info["steps"] == 3 and info["decoder_psnr_db"] > 0
    student = AutoencoderTiny.from_pretrained(out)
    assert student.decode(torch.zeros(1, 4, 16, 16)).sample.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("blocks", ["1,2", "a,b,c", "1,-1,0"])
def test_a_bad_block_list_is_refused_with_a_message(tiny_teacher, tmp_path, blocks, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["taesd", "--teacher", str(tiny_teacher), "--run-dir", str(tmp_path), "--steps", "1",
                    "--decoder-blocks", blocks])
    assert "--decoder-blocks wants three counts" in str(exc.value)
