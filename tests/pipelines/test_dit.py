"""The DiT family on a tiny random-weight DiTPipeline folder in DiT-XL-2-256's layout."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cfg_decomposition import decompose
from pipelines.devices import resolve_device
from pipelines.dit import DiT
from pipelines.events import CancelFlag, GenerationCancelled
from pipelines.model_files import class_labels, native_image_size
from pipelines.registry import ModelLoadError, ModelRegistry
from pipelines.requests import ImageRequest


@pytest.fixture(scope="module")
def tiny_dit(tiny_models_dir):
    entry = ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir).get("local/tiny-dit")
    assert entry.family == "dit"
    return DiT.load(entry, resolve_device("cpu"))


def test_folder_facts_without_loading(tiny_models_dir):
    folder = tiny_models_dir / "tiny-dit"
    assert class_labels(folder) == ["blue square", "cube", "green triangle", "red circle"]
    assert native_image_size(folder) == 16
    assert class_labels(tiny_models_dir / "tiny-sd") is None


def test_generate_matches_diffusers_dit_pipeline_and_reports_its_steps(tiny_dit):
    events = []
    req = ImageRequest("blue square", num_inference_steps=3, guidance_scale=4.0, seed=5, scheduler="ddim")
    result = tiny_dit.generate(req, on_step=events.append)
    assert [e.step for e in events] == [0, 1, 2] and all(e.pred_x0 is not None for e in events)
    assert result.params()["class_label"] == "blue square" and result.params()["class_id"] == 1
    assert result.images[0].size == (16, 16) and result.trajectory.latents.shape == (3, 1, 4, 8, 8)
    # DDIM's last step lands on its own x0 estimate
    torch.testing.assert_close(result.trajectory.pred_x0[-1], result.trajectory.latents[-1], atol=1e-4, rtol=1e-4)
    pipe = tiny_dit.pipe
    pipe.scheduler = tiny_dit.scheduler_for("ddim")
    ref = pipe([1], guidance_scale=4.0, num_inference_steps=3, generator=[torch.Generator().manual_seed(5)],
               output_type="np").images[0]
    assert np.abs(ref - np.asarray(result.images[0]) / 255.0).max() <= 1.5 / 255  # uint8 rounding
    again = tiny_dit.generate(req)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    other = tiny_dit.generate(ImageRequest("blue square", num_inference_steps=3, guidance_scale=4.0, seed=6))
    assert not np.array_equal(np.asarray(other.images[0]), np.asarray(result.images[0]))


def test_prompts_map_to_labels_exactly_or_by_nearest_text_embedding(tiny_dit):
    assert tiny_dit.matcher.match("A Cube.")[:2] == (1, "cube")
    assert tiny_dit.matcher.match("a green triangle")[:2] == (2, "green triangle")
    k, label, similarity = tiny_dit.matcher.match("a big red ball on a white background")
    assert label in tiny_dit.label_names and similarity is not None and -1 <= similarity <= 1
    result = tiny_dit.generate(ImageRequest("a big red ball", "blurry", num_inference_steps=1, guidance_scale=2.0))
    assert any("nearest to the prompt" in w for w in result.warnings)
    assert any("no negative prompt" in w for w in result.warnings)


def test_bad_sizes_cancel_and_decomposition(tiny_dit):
    with pytest.raises(ValueError, match="16x16 images only"):
        tiny_dit.generate(ImageRequest("cube", num_inference_steps=1, width=32, height=32))
    flag = CancelFlag()
    flag.cancel()
    with pytest.raises(GenerationCancelled):
        tiny_dit.generate(ImageRequest("cube", num_inference_steps=2), cancel=flag)
    _, steps = decompose(tiny_dit, ImageRequest("cube", num_inference_steps=2, guidance_scale=3.0, seed=1))
    assert len(steps) == 2 and steps[0].eps_uncond.shape == (4, 8, 8)  # the variance half is left out
    for s in steps:
        torch.testing.assert_close(s.eps_guided, s.eps_uncond + 3.0 * s.delta, atol=1e-5, rtol=1e-4)


def test_a_dit_folder_without_label_names_is_refused(tiny_models_dir, tmp_path):
    folder = shutil.copytree(tiny_models_dir / "tiny-dit", tmp_path / "models" / "nameless")
    index = json.loads((folder / "model_index.json").read_text())
    del index["id2label"]
    (folder / "model_index.json").write_text(json.dumps(index))
    entry = ModelRegistry(builtin_dir=None, user_dir=tmp_path / "models").get("local/nameless")
    with pytest.raises(ModelLoadError, match="no id2label"):
        DiT.load(entry, resolve_device("cpu"))


def test_dit_training_target_trains_exports_and_samples(tmp_path):
    from pipelines.train import main as train_main
    from pipelines.training.dit import class_names, quick_eval

    run = tmp_path / "dit"
    train_main(["dit", "--run-dir", str(run), "--pool", "200", "--steps", "6", "--hidden", "64", "--layers", "1",
                "--batch-size", "8", "--warmup", "2", "--checkpoint-every", "3"])
    info = json.loads((run / "transformer" / "training.json").read_text())
    assert info["step"] == 6 and json.loads(info["id2label"])["0"] == class_names()[0]
    assert len(class_names()) == 44  # 8 colours x 6 shapes minus the 4 hold-out pairs
    vae = Path(__file__).resolve().parents[2] / "assets" / "models" / "shapes-ldm" / "vae"
    scores = quick_eval(run / "transformer", vae, per_class=1, steps=2)
    assert scores["n"] == 44 and 0 <= scores["colour"] <= 1 and 0 <= scores["shape"] <= 1
    by_shape = scores["shape_by_shape"]
    assert set(by_shape) == {"circle", "square", "triangle", "diamond", "star", "cross"}
    # the per-shape figures and the confusion counts add up to the overall shape accuracy
    wrong = sum(scores["shape_confusions"].values())
    assert wrong == round(44 * (1 - scores["shape"]))
    assert all(key.split("->")[0] in by_shape for key in scores["shape_confusions"])

    # a second stage starts from the export; a different shape is refused with the reason
    train_main(["dit", "--run-dir", str(tmp_path / "stage2"), "--latents", str(run / "latents.pt"), "--steps", "2",
                "--hidden", "64", "--layers", "1", "--batch-size", "8", "--warmup", "1",
                "--init-transformer", str(run / "transformer")])
    stage2 = json.loads((tmp_path / "stage2" / "transformer" / "training.json").read_text())
    assert stage2["init_from"]["step"] == 6
    with pytest.raises(SystemExit, match="config differs"):
        train_main(["dit", "--run-dir", str(tmp_path / "bad"), "--latents", str(run / "latents.pt"), "--steps", "2",
                    "--hidden", "64", "--layers", "2", "--init-transformer", str(run / "transformer")])

    # --patch-size 1: 256 tokens of one latent cell each; a resume cannot switch a run's patch size
    small = ["--latents", str(run / "latents.pt"), "--hidden", "64", "--layers", "1", "--batch-size", "4"]
    train_main(["dit", "--run-dir", str(tmp_path / "p1"), *small, "--steps", "1", "--patch-size", "1"])
    from diffusers import DiTTransformer2DModel
    p1 = DiTTransformer2DModel.from_pretrained(tmp_path / "p1" / "transformer")
    assert p1.config.patch_size == 1 and p1.pos_embed.height == 16
    out = p1(torch.randn(1, 4, 16, 16), timestep=torch.tensor([10]), class_labels=torch.tensor([0])).sample
    assert out.shape == (1, 4, 16, 16)
    with pytest.raises(SystemExit, match="patch_size 2 vs 1"):
        train_main(["dit", "--run-dir", str(run), *small, "--steps", "8", "--patch-size", "1", "--resume"])
    with pytest.raises(SystemExit, match="--patch-size 3: it must be a divisor of the latent size 16"):
        train_main(["dit", "--run-dir", str(tmp_path / "p3"), *small, "--steps", "1", "--patch-size", "3"])
