"""pipelines.training.run_export: a VAE-decoder run exported onto shapes-ldm keeps the encoder (and so the UNet's
latent space), carries the new decoder, and a run that changed the encoder is refused with the reason."""
import json

import pytest
import torch

from pipelines.registry import BUILTIN_MODELS_DIR
from pipelines.training.run_export import KINDS, checkpoint_step, export_run

BASE_LDM = BUILTIN_MODELS_DIR / "shapes-ldm"


def _checkpoint(run, touch: str):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(BASE_LDM / "vae", use_safetensors=True, dtype=torch.float32)
    with torch.no_grad():
        next(getattr(vae, touch).parameters()).add_(0.5)
    run.mkdir()
    torch.save({"step": 7, "model": vae.state_dict()}, run / "checkpoint.pt")
    return vae


def test_a_decoder_run_exports_onto_the_base_pipeline(tmp_path):
    from diffusers import AutoencoderKL

    trained = _checkpoint(tmp_path / "run", "decoder")
    out = export_run("vae", tmp_path / "run", tmp_path / "models" / "dec", vae_dir=BASE_LDM / "vae", base=BASE_LDM)
    assert checkpoint_step(tmp_path / "run") == 7
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert json.loads((out / "training.json").read_text())["vae_step"] == 7
    exported = AutoencoderKL.from_pretrained(out / "vae", use_safetensors=True)
    base = AutoencoderKL.from_pretrained(BASE_LDM / "vae", use_safetensors=True, dtype=torch.float32)
    for (k, a), b in zip(exported.decoder.state_dict().items(), trained.decoder.state_dict().values()):
        assert torch.equal(a, b), k
    assert not torch.equal(next(exported.decoder.parameters()), next(base.decoder.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(exported.encoder.parameters(), base.encoder.parameters()))
    assert (out / "unet").is_dir() and not (tmp_path / "models" / "dec.tmp").exists()


def test_an_encoder_change_is_refused_and_leaves_nothing(tmp_path):
    _checkpoint(tmp_path / "run", "encoder")
    with pytest.raises(ValueError, match="changed the encoder"):
        export_run("vae", tmp_path / "run", tmp_path / "models" / "enc", vae_dir=BASE_LDM / "vae", base=BASE_LDM)
    assert not (tmp_path / "models").exists()
    with pytest.raises(ValueError, match="unknown export kind"):
        export_run("clip", tmp_path / "run", tmp_path / "x", vae_dir=BASE_LDM / "vae", base=BASE_LDM)
    assert "clip" not in KINDS
