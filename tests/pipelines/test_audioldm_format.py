"""Tiny random AudioLDM components in the real folder format (the path a real AudioLDM checkpoint takes)."""
import json

import torch


def test_tiny_audioldm_folder_loads_and_makes_sound(tmp_path):
    from diffusers import AudioLDMPipeline

    from pipelines.tiny import build_tiny_audioldm

    folder = build_tiny_audioldm(tmp_path / "tiny-audioldm")
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "AudioLDMPipeline"
    assert {"vae", "text_encoder", "tokenizer", "unet", "scheduler", "vocoder"} <= {p.name for p in folder.iterdir()}
    assert not list(folder.rglob("*.bin"))  # safetensors only
    pipe = AudioLDMPipeline.from_pretrained(folder, use_safetensors=True)
    out = pipe("a low sine tone", num_inference_steps=2, audio_length_in_s=0.5,
               generator=torch.Generator().manual_seed(0))
    assert out.audios.shape == (1, 8000)
