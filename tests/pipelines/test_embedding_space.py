"""pipelines.embedding_space: CLIP models from disk (builtin open_clip, tiny open_clip ViT, tiny transformers
CLIP), projections, and the probes checked against direct computations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import embedding_space as es


@pytest.fixture(scope="module")
def builtin():
    torch.set_num_threads(2)
    return es.ClipEmbedder(es.find_clip_models()[0])


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    from pipelines.tiny import build_tiny_hf_clip, build_tiny_open_clip_vit

    root = tmp_path_factory.mktemp("clips")
    build_tiny_open_clip_vit(root / "vit")
    build_tiny_hf_clip(root / "hf")
    (root / "not-a-model").mkdir()
    (root / "not-a-model" / "config.json").write_text('{"model_type": "t5"}')
    return root


def test_builtin_is_found_first_and_keyed_by_its_weights(builtin):
    assert builtin.id == es.BUILTIN_CLIP_ID and builtin.key.startswith("builtin/shapes-clip@")
    assert builtin.image_size == 64 and builtin.context_length == 32 and builtin.dim == 128


def test_zero_shot_colour_on_ground_truth_renders_is_at_least_95_percent(builtin):
    from pipelines.worlds import shapes

    rng = np.random.default_rng(7)
    recipes = [shapes.sample_recipe(rng, holdout="include") for _ in range(96)]
    vectors = builtin.embed_images([shapes.render(r) for r in recipes])
    right = 0
    for recipe, vec in zip(recipes, vectors):
        rows = es.zero_shot(builtin, vec, list(shapes.COLOURS), "a {} shape")
        right += max(rows, key=lambda r: r[1])[0] == recipe.colour
    assert right / len(recipes) >= 0.95, right


def test_zero_shot_is_clips_softmax_over_scaled_cosines(builtin):
    image = Image.new("RGB", (64, 64), (220, 40, 40))
    vec = builtin.embed_images([image])[0]
    rows = es.zero_shot(builtin, vec, ["red", "blue", "green"], "a {} shape")
    texts = builtin.embed_texts(["a red shape", "a blue shape", "a green shape"])
    logits = builtin.logit_scale * texts @ vec
    expected = torch.softmax(torch.from_numpy(logits), 0).numpy()
    np.testing.assert_allclose([r[1] for r in rows], expected, rtol=1e-5)
    np.testing.assert_allclose([r[2] for r in rows], texts @ vec, rtol=1e-5)
    with pytest.raises(ValueError, match="two labels"):
        es.zero_shot(builtin, vec, ["red", " "])


def test_compositional_probe_equals_direct_cosines(builtin):
    r = es.compare_texts(builtin, "a red circle", "a red square", "a blue circle")
    with torch.no_grad():
        model = builtin.model
        f = torch.nn.functional.normalize(model.encode_text(builtin.tokenize(["a red circle", "a red square",
                                                                               "a blue circle"])), dim=-1)
    assert r["cos_ab"] == pytest.approx(float(f[0] @ f[1]), abs=1e-5)
    assert r["cos_ac"] == pytest.approx(float(f[0] @ f[2]), abs=1e-5)
    assert r["closer"] == ("B" if r["cos_ab"] > r["cos_ac"] else "C")
    with pytest.raises(ValueError):
        es.compare_texts(builtin, "a", "", "c")


def test_wrong_mode_and_size_are_converted_and_said(builtin):
    image = Image.new("LA", (200, 50), (128, 255))
    rgb, note = builtin.prepare(image)
    assert rgb.mode == "RGB" and "converted from LA" in note and "resized from 200x50 to 64x64" in note
    assert builtin.embed_images([image]).shape == (1, 128)
    assert builtin.prepare(Image.new("RGB", (64, 64)))[1] is None


def test_long_text_is_cut_at_the_context_length(builtin):
    vec = builtin.embed_texts(["a red circle " * 2000])
    assert vec.shape == (1, 128) and np.isfinite(vec).all()


def test_clip_folders_on_disk_load_in_both_formats(tiny_clips):
    found = {c.id: c for c in es.find_clip_models(tiny_clips)}
    assert found["local/vit"].kind == "open_clip" and found["local/hf"].kind == "transformers"
    assert "local/not-a-model" not in found
    for cid, size, dim in (("local/vit", 32, 32), ("local/hf", 30, 24)):
        emb = es.ClipEmbedder(found[cid])
        v = emb.embed_images([Image.new("RGB", (size, size), (1, 2, 3)), Image.new("RGB", (90, 45))])
        t = emb.embed_texts(["a red circle", "a blue star"])
        assert v.shape == (2, dim) and t.shape == (2, dim)
        np.testing.assert_allclose(np.linalg.norm(np.concatenate([v, t]), axis=1), 1.0, rtol=1e-5)


def test_pickle_only_folder_is_not_a_clip_model(tmp_path):
    (tmp_path / "open_clip_config.json").write_text("{}")
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"\x80\x04")
    assert es.clip_kind(tmp_path) is None


@pytest.mark.parametrize("method", es.METHODS)
@pytest.mark.parametrize("dims", [2, 3])
def test_each_projection_gives_one_point_per_item(method, dims):
    x = np.random.default_rng(0).normal(size=(30, 16)).astype(np.float32)
    coords = es.project(x / np.linalg.norm(x, axis=1, keepdims=True), method, dims)
    assert coords.shape == (30, dims) and np.isfinite(coords).all()


def test_projection_input_checks():
    x = np.ones((3, 8), np.float32)
    with pytest.raises(ValueError, match="at least 5"):
        es.project(x, "umap")
    assert es.project(x[:1], "pca").shape == (1, 2)
    with pytest.raises(ValueError, match="unknown projection"):
        es.project(x, "lda")


def test_nearest_orders_by_cosine():
    vectors = np.eye(4, dtype=np.float32)
    hits = es.nearest(np.array([0.1, 0.9, 0.0, 0.2], np.float32), vectors, k=2)
    assert [h[0] for h in hits] == [1, 3]
    assert es.nearest(np.zeros(4, np.float32), vectors) == []
