"""Guidance-study metrics: colourfulness, diversity, Shapes adherence, and CLIP score against open_clip."""
import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.metrics import BUILTIN_CLIP_DIR, ClipScorer, colourfulness, diversity, shapes_adherence
from pipelines.worlds import shapes


def test_colourfulness_follows_hasler_suesstrunk():
    assert colourfulness(np.full((8, 8, 3), 128, np.uint8)) == 0.0
    half = np.zeros((2, 2, 3), np.uint8)
    half[0] = (255, 0, 0)  # two red pixels, two black: rg = 255/0, yb = 127.5/0
    rg, yb = np.array([255, 255, 0, 0.0]), np.array([127.5, 127.5, 0, 0])
    expected = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    assert colourfulness(Image.fromarray(half)) == pytest.approx(expected)
    dull = np.full((8, 8, 3), (140, 120, 120), np.uint8)
    assert colourfulness(dull) < colourfulness(half)
    with pytest.raises(ValueError, match="RGB"):
        colourfulness(np.zeros((8, 8)))


def test_diversity_is_mean_pairwise_cosine_distance():
    assert diversity(torch.ones(3, 4)) == pytest.approx(0.0, abs=1e-6)
    assert diversity(torch.eye(3)) == pytest.approx(1.0)
    assert diversity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(2.0)
    assert diversity(torch.ones(1, 4)) == 0.0


def test_shapes_adherence_reads_the_prompt():
    recipe = shapes.ShapeRecipe("red", "triangle", "large", "center", "white")
    image = shapes.render_batch([recipe])[0]
    assert shapes_adherence(image, "a red triangle on a white background") == 1.0
    assert shapes_adherence(image, "a blue triangle on a white background") == pytest.approx(2 / 3)
    assert shapes_adherence(image, "an astronaut riding a horse") is None


def test_clip_score_equals_open_clip_on_the_saved_files(tmp_path):
    import open_clip

    rng = np.random.default_rng(0)
    recipes = [shapes.sample_recipe(rng) for _ in range(4)]
    images = [Image.fromarray(a) for a in shapes.render_batch(recipes)]
    prompt = shapes.caption(recipes[0])
    scores = ClipScorer.builtin().clip_scores(prompt, images)
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    # independent: open_clip's own loader, transform and tokenizer, images read back from disk
    model, transform = open_clip.create_model_from_pretrained(f"local-dir:{BUILTIN_CLIP_DIR.resolve()}")
    model = model.float().eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{BUILTIN_CLIP_DIR.resolve()}")
    with torch.no_grad():
        img = model.encode_image(torch.stack([transform(Image.open(p).convert("RGB")) for p in paths]))
        txt = model.encode_text(tokenizer([prompt]))
    expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores[0] == max(scores)  # the prompt is the first image's caption
