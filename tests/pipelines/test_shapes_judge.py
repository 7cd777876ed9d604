"""The Shapes judge: near-perfect on ground-truth renders, near chance (or None) on noise."""
import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipelines.judges import shapes as J
from pipelines.worlds import shapes as S

N_CLASSES = {"colour": len(S.COLOURS), "shape": len(S.SHAPES), "size": len(S.SIZES),
             "position": len(S.POSITIONS), "background": len(S.BACKGROUNDS)}


@pytest.fixture(scope="module")
def renders():
    """600 random recipes (with jitter; every 4th a hold-out pair) and their images."""
    rng = np.random.default_rng(11)
    recipes = [S.sample_recipe(rng, holdout="only" if i % 4 == 0 else "include") for i in range(600)]
    return recipes, S.render_batch(recipes)


def test_ground_truth_renders_score_at_least_99_percent(renders):
    recipes, images = renders
    for key in S.ATTRIBUTES:  # the sample covers every class of every attribute
        assert len({getattr(r, key) for r in recipes}) == N_CLASSES[key]
    assert sum(r.is_holdout for r in recipes) >= 150
    scores = J.score(images, recipes)
    assert set(scores) == set(S.ATTRIBUTES)
    assert all(v >= 0.99 for v in scores.values()), scores
    assert J.score(list(images[:100]), [J.recipe_attributes(r) for r in recipes[:100]]) == {
        k: 1.0 for k in S.ATTRIBUTES}


def test_describe_reads_a_render():
    r = S.ShapeRecipe("cyan", "triangle", "small", "bottom left", "gray", dx=-1.7, dy=1.9)
    assert J.describe(S.render(r)) == J.recipe_attributes(r)
    # Also from other layouts: float in [0, 1], CHW, and a 2x upscaled image.
    arr = S.render_array(r)
    assert J.describe(arr.astype(np.float32) / 255) == J.recipe_attributes(r)
    assert J.describe(arr.transpose(2, 0, 1)) == J.recipe_attributes(r)
    assert J.describe(S.render(r).resize((128, 128), Image.Resampling.NEAREST)) == J.recipe_attributes(r)


def _noise_scores(images):
    rng = np.random.default_rng(5)
    expecteds = [J.recipe_attributes(S.sample_recipe(rng, holdout="include")) for _ in images]
    return J.score(images, expecteds)


@pytest.mark.parametrize("blur", [0.0, 1.0, 2.0, 4.0])
def test_noise_scores_near_chance(blur):
    rng = np.random.default_rng(int(blur * 10))
    noise = rng.integers(0, 256, (300, 64, 64, 3), dtype=np.uint8)
    if blur:
        noise = np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(blur))) for x in noise])
    scores = _noise_scores(noise)
    for key, acc in scores.items():
        assert acc <= 2.5 / N_CLASSES[key], (key, scores)


def test_no_object_means_none():
    plain = np.full((64, 64, 3), 20, dtype=np.uint8)
    assert J.describe(plain) == {"colour": None, "shape": None, "size": None, "position": None,
                                 "background": "black"}
    assert J.judge(plain, {"colour": "red", "background": "black"}) == {"colour": False, "background": True}
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert all(v is None for v in J.describe(noise).values())


def test_judge_returns_only_asked_keys_and_catches_wrong_expectations():
    r = S.ShapeRecipe("red", "circle", "large", "center", "white")
    img = S.render(r)
    assert J.judge(img, {"colour": "red"}) == {"colour": True}
    assert J.judge(img, {"colour": "blue"}) == {"colour": False}
    assert J.judge(img, S.parse_prompt("A RED circle in the center")) == {
        "colour": True, "shape": True, "position": True}
    wrong = {"colour": "orange", "shape": "square", "size": "small", "position": "left", "background": "gray"}
    assert J.judge(img, wrong) == {k: False for k in S.ATTRIBUTES}
    # Fields that are not judged attributes (the jitter) are ignored.
    assert J.judge(img, {"shape": "circle", "dx": 0.0}) == {"shape": True}
    assert J.judge(img, r) == {k: True for k in S.ATTRIBUTES}


def test_close_confusions_are_told_apart():
    for colour, other in (("orange", "yellow"), ("purple", "blue"), ("pink", "red")):
        for shape, other_shape in (("square", "diamond"), ("star", "cross"), ("circle", "square")):
            r = S.ShapeRecipe(colour, shape, "small", "top right", "gray", 2.0, 2.0)
            assert J.judge(S.render(r), {"colour": other, "shape": other_shape}) == {
                "colour": False, "shape": False}
            assert J.judge(S.render(r), {"colour": colour, "shape": shape, "size": "small"}) == {
                "colour": True, "shape": True, "size": True}


def test_robust_to_mild_pixel_noise(renders):
    recipes, images = renders
    rng = np.random.default_rng(1)
    noisy = np.clip(images[:200] + rng.normal(0, 6, images[:200].shape), 0, 255).astype(np.uint8)
    scores = J.score(noisy, recipes[:200])
    assert all(v >= 0.95 for v in scores.values()), scores
