"""The tones-ldm training targets at tiny settings (a few steps on a 24-clip pool): each writes what the next
reads, the LDM packs a complete AudioLDM folder with the Griffin-Lim vocoder that loads through the registry
and makes sound, and an interrupted run resumed with --resume ends exactly where an uninterrupted one does."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import train
from pipelines.training import tones_data

POOL_N, POOL_SEED = 24, 5


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tones-train")
    pool = tones_data.build_pool(root / "pool.pt", POOL_N, POOL_SEED, workers=1)
    common = ["--pool-path", str(pool), "--pool", str(POOL_N), "--pool-seed", str(POOL_SEED), "--threads", "1"]
    train.main(["tones_vae", "--steps", "2", "--batch-size", "2", "--widths", "4,4,4,4", "--latent-channels", "2",
                "--eval-clips", "0", "--run-dir", str(root / "vae"), *common])
    train.main(["tones_clap", "--steps", "2", "--batch-size", "8", "--width", "16", "--layers", "1", "--dim", "8",
                "--audio-width", "8", "--eval-clips", "0", "--run-dir", str(root / "clap"), *common])
    ldm = ["tones_ldm", "--steps", "3", "--batch-size", "4", "--widths", "8,16", "--heads", "1", "--warmup", "1",
           "--checkpoint-every", "1", "--vae-dir", str(root / "vae" / "out"), "--text-dir", str(root / "clap" / "out"),
           "--default-steps", "3", "--default-guidance", "2", *common]
    train.main([*ldm, "--run-dir", str(root / "ldm")])
    train.main([*ldm, "--run-dir", str(root / "ldm-split"), "--stop-at", "2"])
    train.main([*ldm, "--run-dir", str(root / "ldm-split"), "--resume"])
    return {"root": root, "ldm": root / "ldm", "split": root / "ldm-split", "vae": root / "vae" / "out",
            "clap": root / "clap" / "out"}


def test_pool_holds_mels_in_the_vocoders_layout_and_every_caption_is_tabled(trained):
    pool = torch.load(trained["root"] / "pool.pt", weights_only=True)
    assert pool["mels"].shape == (POOL_N, tones_data.FRAMES, tones_data.MEL.n_mels)
    assert pool["recipes"].shape == (POOL_N, 4)
    assert float(pool["mels"].float().min()) >= np.log(tones_data.MEL.floor) - 1e-2
    table = torch.load(trained["ldm"] / "captions.pt", weights_only=True)
    assert table["captions"][0] == "" and len(table["captions"]) == 181
    torch.testing.assert_close(table["embeddings"].norm(dim=1), torch.ones(181))  # pipeline's L2 normalisation


def test_packed_folder_loads_through_the_registry_as_an_audio_model_and_makes_sound(trained):
    from pipelines.audio_ldm import AudioLDM, AudioRequest, GriffinLimVocoder
    from pipelines.default_settings import read_default_settings
    from pipelines.devices import resolve_device
    from pipelines.registry import ModelRegistry

    pack = trained["ldm"] / "pack"
    index = json.loads((pack / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDMPipeline" and index["vocoder"] == ["pipelines.audio_ldm", "GriffinLimVocoder"]
    assert not list(pack.rglob("*.bin")) and not list((pack / "vocoder").glob("*.safetensors"))
    settings = read_default_settings(pack)
    assert settings["num_inference_steps"] == 3 and settings["guidance_scale"] == 2.0
    entry = ModelRegistry(builtin_dir=trained["ldm"]).get("builtin/pack")
    assert entry.media == "audio" and entry.family == "audio_ldm"
    model = AudioLDM.load(entry, resolve_device("cpu"))
    assert isinstance(model.pipe.vocoder, GriffinLimVocoder) and model.pipe.unet.config.class_embed_type == "simple_projection"
    result = model.generate(AudioRequest(prompt="a high sine tone", duration_s=0.5, num_inference_steps=2, seed=4))
    assert result.samples.shape == (8000,) and np.isfinite(result.samples).all()
    assert result.mel.shape[1] == tones_data.MEL.n_mels and len(result.timesteps) == 2


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(trained):
    a = torch.load(trained["ldm"] / "checkpoint.pt", weights_only=True)
    b = torch.load(trained["split"] / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key], msg=key)
    losses = [json.loads(line)["loss"] for line in (trained["split"] / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 3


def test_vae_records_its_scaling_factor_and_clap_ships_a_word_level_tokenizer(trained):
    from transformers import RobertaTokenizer

    assert json.loads((trained["vae"] / "config.json").read_text())["scaling_factor"] > 0
    tokenizer = RobertaTokenizer.from_pretrained(trained["clap"] / "tokenizer")
    ids = tokenizer("a loud high sawtooth wave held steady").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "a", "Ġloud", "Ġhigh", "Ġsawtooth", "Ġwave", "Ġheld",
                                                    "Ġsteady", "</s>"]
    assert tokenizer("a dog barking").input_ids[-1] == tokenizer.eos_token_id  # unknown words fall back to bytes
