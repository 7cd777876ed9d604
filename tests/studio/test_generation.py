"""Form values -> requests (the Generate handler's checks) and results -> gallery rows."""
import math

import pytest

from pipelines.requests import ImageRequest
from studio.gallery import Gallery, read_png_params
from studio.generation import build_request, decode_trajectory, recall_values, resolve_seed, save_result

GOOD = dict(prompt="a red circle", negative_prompt="", steps=20, guidance=7.5, seed=5, width=64, height=64,
            scheduler="model default", batch_size=1)


def _req(**changes):
    values = GOOD | changes
    return build_request(values["prompt"], values["negative_prompt"], values["steps"], values["guidance"],
                         values["seed"], values["width"], values["height"], values["scheduler"],
                         values["batch_size"])


def test_form_values_become_a_request():
    req = _req(steps=20.0, seed="42")
    assert (req.num_inference_steps, req.seed, req.scheduler, req.width) == (20, 42, None, 64)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prompt": ""}, "Type a prompt"),
        ({"steps": 2.5}, "Steps must be a whole number"),
        ({"guidance": float("nan")}, "Guidance scale must be a finite number"),
        ({"guidance": math.inf}, "finite"),
        ({"guidance": "lots"}, "Guidance scale must be a number"),
        ({"seed": "abc"}, "Seed must be a whole number"),
        ({"seed": 1.25}, "Seed must be a whole number"),
        ({"seed": -7}, "Seed must be -1"),
        ({"width": None}, "Width must be a whole number"),
        ({"batch_size": True}, "Batch size"),
    ],
)
def test_bad_form_values_are_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        _req(**changes)


def test_random_seed_is_drawn_for_minus_one_and_empty():
    seeds = {resolve_seed(-1), resolve_seed(-1.0), resolve_seed(""), resolve_seed(None)}
    assert all(0 <= s < 2**32 for s in seeds) and len(seeds) > 1


def test_batch_saves_one_recallable_row_per_image(tiny_sd, tmp_path):
    result = tiny_sd.generate(ImageRequest("a cyan cross", num_inference_steps=2, seed=9, num_images=2))
    frames = [decode_trajectory(tiny_sd.preview, result, i) for i in range(2)]
    gallery = Gallery.open(tmp_path / "g")
    try:
        ids = save_result(gallery, result, frames)
        rows = [gallery.get(i) for i in ids]
        assert [r.seed for r in rows] == [9, 10]
        assert all(r.params["num_images"] == 1 and r.trajectory_frames == 2 for r in rows)
        stored = read_png_params(gallery.store.resolve(rows[1].media_path))
        assert stored["seed"] == 10 and stored["prompt"] == "a cyan cross" and stored["model_id"] == "local/tiny-sd"
        # Recalling row 2 alone reproduces its pixels.
        again = tiny_sd.generate(ImageRequest("a cyan cross", num_inference_steps=2, seed=10))
        import numpy as np
        from PIL import Image
        saved = np.asarray(Image.open(gallery.store.resolve(rows[1].media_path)).convert("RGB")).astype(int)
        assert np.abs(saved - np.asarray(again.images[0]).astype(int)).max() <= 1
    finally:
        gallery.close()


def test_recall_regenerates_the_same_pixels(tiny_sd, tmp_path):
    import numpy as np

    req = _req(prompt="a pink star", steps=3, guidance=5.0, seed=31, width=16, height=16, scheduler="euler_a")
    result = tiny_sd.generate(req)
    gallery = Gallery.open(tmp_path / "g")
    try:
        (gen_id,) = save_result(gallery, result, [None])
        model_id, *form = recall_values(gallery.get(gen_id))
        assert model_id == "local/tiny-sd"
        again = tiny_sd.generate(build_request(*form))
        assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    finally:
        gallery.close()


def test_recall_of_a_token_model_image_regenerates_it(tiny_models_dir, tmp_path):
    import numpy as np

    from pipelines.devices import resolve_device
    from pipelines.families import load_model
    from pipelines.registry import ModelRegistry

    model = load_model(ModelRegistry(builtin_dir=None, user_dir=tiny_models_dir).get("local/tiny-vqgan"),
                       resolve_device("cpu"))
    result = model.generate(build_request("a red circle", "", 4, 2.0, 3, 16, 16, "model default", 1, 0.8, 6))
    gallery = Gallery.open(tmp_path / "g")
    try:
        (gen_id,) = save_result(gallery, result, [None])
        model_id, *form = recall_values(gallery.get(gen_id))
        assert model_id == "local/tiny-vqgan" and form[-4:] == ["model default", 1, 0.8, 6]
        again = model.generate(build_request(*form))
        assert np.array_equal(np.asarray(again.images[0]), np.asarray(result.images[0]))
    finally:
        gallery.close()
