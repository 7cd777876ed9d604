"""The Shapes world: sampling, hold-out, captions, prompt parsing and rendering."""
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pipelines.worlds import shapes as S


def test_constants_match_spec():
    assert S.IMAGE_SIZE == 64
    assert S.ATTRIBUTES == ("colour", "shape", "size", "position", "background")
    assert len(S.COLOURS) == 8 and S.COLOURS["purple"] == (150, 60, 200)
    assert S.BACKGROUNDS == {"white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128)}
    assert S.SHAPES == ("circle", "square", "triangle", "diamond", "star", "cross")
    assert set(S.POSITIONS) == set(S.POSITION_PHRASES) and len(S.POSITIONS) == 9
    assert S.HOLDOUT_PAIRS == {("purple", "star"), ("orange", "cross"), ("cyan", "triangle"), ("pink", "diamond")}
    # A large shape with maximal jitter stays on the canvas.
    for x, y in S.POSITIONS.values():
        for c in (x, y):
            assert c - S.JITTER - S.SIZES["large"] >= 0 and c + S.JITTER + S.SIZES["large"] <= 64


def test_recipe_properties():
    r = S.ShapeRecipe("purple", "star", "large", "top left", "black", dx=1.5, dy=-0.5)
    assert r.is_holdout and r.centre == (21.5, 19.5) and r.radius == 17.0
    assert not S.ShapeRecipe("red", "star", "small", "center", "white").is_holdout


def test_dataset_is_deterministic_by_seed():
    a, b, c = S.sample_dataset(7, 50), S.sample_dataset(7, 50), S.sample_dataset(8, 50)
    assert a == b and a != c
    recipes = [r for r, _ in a]
    assert np.array_equal(S.render_batch(recipes), S.render_batch([r for r, _ in b]))
    assert not np.array_equal(S.render_batch(recipes), S.render_batch([r for r, _ in c]))
    assert S.eval_prompts() == S.eval_prompts()


def test_holdout_modes():
    rng = np.random.default_rng(0)
    train = [S.sample_recipe(rng) for _ in range(20_000)]
    assert not any(r.is_holdout for r in train)
    for key in ("colour", "shape", "size", "position", "background"):
        assert {getattr(r, key) for r in train} == set({"colour": S.COLOURS, "shape": S.SHAPES, "size": S.SIZES,
                                                        "position": S.POSITIONS, "background": S.BACKGROUNDS}[key])
    assert all(abs(r.dx) <= S.JITTER and abs(r.dy) <= S.JITTER for r in train)
    only = [S.sample_recipe(rng, holdout="only") for _ in range(400)]
    assert all(r.is_holdout for r in only) and {(r.colour, r.shape) for r in only} == S.HOLDOUT_PAIRS
    anything = [S.sample_recipe(rng, holdout="include") for _ in range(3000)]
    assert any(r.is_holdout for r in anything) and not all(r.is_holdout for r in anything)
    with pytest.raises(ValueError):
        S.sample_recipe(rng, holdout="sometimes")
    assert not any(r.is_holdout for r, _ in S.sample_dataset(0, 2000))


def test_eval_prompts():
    recipes = S.eval_prompts(n_seen=50)
    seen, held = recipes[:50], recipes[50:]
    assert not any(r.is_holdout for r in seen) and all(r.is_holdout for r in held)
    assert Counter((r.colour, r.shape) for r in held) == {p: 10 for p in S.HOLDOUT_PAIRS}
    assert all(r.dx == 0 and r.dy == 0 for r in recipes)
    assert {r.size for r in held} == set(S.SIZES) and len({r.background for r in held}) == 3


GRAMMAR = re.compile(
    r"^a (?:(small|large) )?(\w+) (\w+)"
    r"(?: (in the center|on the left|on the right|at the top|at the bottom|in the (?:top|bottom) (?:left|right)))?"
    r"(?: on a (white|black|gray) background)?$"
)


def test_captions_follow_the_grammar():
    r = S.ShapeRecipe("red", "circle", "small", "top left", "black")
    assert S.caption(r) == "a small red circle in the top left on a black background"
    assert S.caption(r, drop_prob=1.0) == S.caption(r)  # no rng: never drops
    rng = np.random.default_rng(3)
    assert S.caption(r, rng, drop_prob=1.0) == "a red circle"
    assert S.caption(r, rng, drop_prob=0.0) == S.caption(r)
    lengths = Counter()
    for recipe, text in S.sample_dataset(1, 3000):
        m = GRAMMAR.match(text)
        assert m, text
        assert (m.group(2), m.group(3)) == (recipe.colour, recipe.shape)
        dropped = sum(g is None for g in (m.group(1), m.group(4), m.group(5)))
        lengths[dropped] += 1
    # Each part dropped with p=0.3 independently: P(none dropped) = 0.343.
    assert 0.30 < lengths[0] / 3000 < 0.39 and lengths[3] > 0


def test_parse_prompt_round_trips():
    rng = np.random.default_rng(2)
    for _ in range(500):
        r = S.sample_recipe(rng, holdout="include")
        full = {k: getattr(r, k) for k in S.ATTRIBUTES}
        assert S.parse_prompt(S.caption(r)) == full
        short = S.parse_prompt(S.caption(r, rng))
        assert short.items() <= full.items() and {"colour", "shape"} <= short.keys()
    assert S.parse_prompt("A Red circle, on the left!") == {"colour": "red", "shape": "circle", "position": "left"}
    assert S.parse_prompt("a red circle") == {"colour": "red", "shape": "circle"}
    assert S.parse_prompt("Big BLUE stars, top-left, grey backdrop") == {
        "size": "large", "colour": "blue", "shape": "star", "position": "top left", "background": "gray"}
    assert S.parse_prompt("something at the bottom right")["position"] == "bottom right"
    assert S.parse_prompt("a cat") == {}


def test_render_pixels():
    r = S.ShapeRecipe("red", "circle", "large", "center", "black")
    img = S.render(r)
    assert isinstance(img, Image.Image) and img.size == (64, 64) and img.mode == "RGB"
    arr = S.render_array(r)
    assert arr.dtype == np.uint8 and arr.shape == (64, 64, 3)
    assert tuple(arr[32, 32]) == S.COLOURS["red"] and tuple(arr[0, 0]) == S.BACKGROUNDS["black"]
    # Anti-aliased: some edge pixels are strictly between background and colour.
    red = arr[..., 0]
    assert ((red > 20) & (red < 220)).sum() > 20
    for colour, rgb in S.COLOURS.items():
        for shape in S.SHAPES:
            a = S.render_array(S.ShapeRecipe(colour, shape, "small", "bottom right", "white", 1.0, -1.0))
            assert tuple(a[43, 45]) == rgb and tuple(a[0, 0]) == S.BACKGROUNDS["white"]
    batch = S.render_batch([r, r])
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.uint8 and np.array_equal(batch[0], arr)


def test_large_shape_stays_on_canvas():
    # Same coverage at every anchor with extreme jitter as in the middle: nothing clipped.
    for dx, dy in ((2.0, -2.0), (-2.0, 2.0), (2.0, 2.0), (-2.0, -2.0)):
        for shape in S.SHAPES:
            full = S.coverage(shape, 32.0 + dx, 32.0 + dy, 17.0).sum()
            assert full == pytest.approx(S.unit_area(shape) * 17.0 ** 2, rel=0.1)
            for pos in S.POSITIONS:
                r = S.ShapeRecipe("blue", shape, "large", pos, "white", dx=dx, dy=dy)
                assert S.coverage(shape, *r.centre, r.radius).sum() == pytest.approx(full, rel=1e-4)
